// Weight loader: Q6_K super-blocks of 256 values in ggml's layout (ql[128], qh[64], int8
// scales[16]) as 52 words per block, followed by every block's f16 d, two per u32, from word
// P.w_sc: split at upload so the device holds the file's 210 bytes a block. P.w_row: blocks
// per row. `k` is a multiple of 4: the four values share the same ql word, qh word and scale.
fn w_load4(row: u32, k: u32) -> vec4<f32> {
    let b = row * P.w_row + k / 256u;
    let base = b * 52u;
    let j = k % 256u;
    let n = j / 128u;        // which half of the block
    let g = (j % 128u) / 32u; // which quarter of the half
    let l = j % 32u;
    let ql = w[base + (n * 64u + l + (g & 1u) * 32u) / 4u] >> select(0u, 4u, g >= 2u);
    let qh = w[base + 32u + (n * 32u + l) / 4u] >> (2u * g);
    let si = n * 8u + l / 16u + 2u * g;
    let sc = f32(bitcast<i32>(w[base + 48u + si / 4u] << (24u - 8u * (si % 4u))) >> 24u);
    let d = unpack2x16float(w[P.w_sc + b / 2u])[b & 1u] * sc;
    var v: vec4<f32>;
    for (var c = 0u; c < 4u; c++) {
        let q = ((ql >> (8u * c)) & 15u) | (((qh >> (8u * c)) & 3u) << 4u);
        v[c] = d * (f32(q) - 32.0);
    }
    return v;
}
