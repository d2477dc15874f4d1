// Weight loader: Q5_K super-blocks of 256 values copied as they are (176 bytes, 44 words: f16
// d and f16 dmin, 12 bytes of packed 6-bit scales and mins, qh[32], qs[128]). Value
// c*64 + h*32 + l is nibble h of qs[c*32 + l] plus 16 when bit 2c + h of qh[l] is set, with
// scale and min 2c + h (ggml's get_scale_min_k4). P.w_row: blocks per row. `k` is a multiple
// of 4.
fn w_load4(row: u32, k: u32) -> vec4<f32> {
    let base = (row * P.w_row + k / 256u) * 44u;
    let i = k % 256u;
    let c = i / 64u;
    let h = (i % 64u) / 32u;
    let l = i % 32u;
    let word = w[base + 12u + (c * 32u + l) / 4u] >> (4u * h);
    let hb = w[base + 4u + l / 4u] >> (2u * c + h);
    let dm = unpack2x16float(w[base]);
    let sm = k4_scale_min(base, 2u * c + h);
    let d1 = dm.x * sm.x;
    let m1 = dm.y * sm.y;
    let lo = vec4<u32>(word, word >> 8u, word >> 16u, word >> 24u) & vec4<u32>(15u);
    let hi = (vec4<u32>(hb, hb >> 8u, hb >> 16u, hb >> 24u) & vec4<u32>(1u)) << vec4<u32>(4u);
    return d1 * vec4<f32>(lo | hi) - vec4<f32>(m1);
}
