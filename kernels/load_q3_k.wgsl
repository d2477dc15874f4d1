// Weight loader: Q3_K super-blocks of 256 values, split at upload into 27 words per block
// (hmask[32], qs[64], the 12 bytes of packed 6-bit scales) followed by every block's f16 d, two
// per u32, from word P.w_sc (110 bytes a block, as in the file). Value n*128 + j*32 + l is
// bits 2j of qs[n*32 + l], minus 4 unless bit 4n + j of hmask[l] is set, times scale
// n*8 + 2j + l/16. P.w_row: blocks per row. `k` is a multiple of 4.
fn q3k_byte(base: u32, i: u32) -> u32 {
    return (w[base + 24u + i / 4u] >> (8u * (i % 4u))) & 255u;
}

fn w_load4(row: u32, k: u32) -> vec4<f32> {
    let b = row * P.w_row + k / 256u;
    let base = b * 27u;
    let i = k % 256u;
    let n = i / 128u;
    let j = (i % 128u) / 32u;
    let l = i % 32u;
    let q = w[base + 8u + (n * 32u + l) / 4u] >> (2u * j);
    let hm = w[base + l / 4u] >> (4u * n + j);
    let si = n * 8u + 2u * j + l / 16u;
    let lo = select(q3k_byte(base, si - 8u) >> 4u, q3k_byte(base, si) & 15u, si < 8u);
    let hi = (q3k_byte(base, 8u + si % 4u) >> (2u * (si / 4u))) & 3u;
    let d = unpack2x16float(w[P.w_sc + b / 2u])[b & 1u];
    let dl = d * f32(i32(lo | (hi << 4u)) - 32);
    var v: vec4<f32>;
    for (var c = 0u; c < 4u; c++) {
        let h = select(4.0, 0.0, ((hm >> (8u * c)) & 1u) != 0u);
        v[c] = dl * (f32((q >> (8u * c)) & 3u) - h);
    }
    return v;
}
