// Weight loader: Q4_K super-blocks of 256 values copied as they are (144 bytes, 36 words: f16 d
// and f16 dmin, 12 bytes of packed 6-bit scales and mins, qs[128]). Value c*64 + h*32 + l
// (c < 4, h < 2, l < 32) is nibble h of qs[c*32 + l], with scale and min 2c + h as ggml's
// get_scale_min_k4 unpacks them. P.w_row: blocks per row. `k` is a multiple of 4.
fn w_load4(row: u32, k: u32) -> vec4<f32> {
    let base = (row * P.w_row + k / 256u) * 36u;
    let i = k % 256u;
    let c = i / 64u;
    let h = (i % 64u) / 32u;
    let l = i % 32u;
    let word = w[base + 4u + (c * 32u + l) / 4u] >> (4u * h);
    let dm = unpack2x16float(w[base]);
    let sm = k4_scale_min(base, 2u * c + h);
    let d1 = dm.x * sm.x;
    let m1 = dm.y * sm.y;
    let q = vec4<u32>(word, word >> 8u, word >> 16u, word >> 24u) & vec4<u32>(15u);
    return d1 * vec4<f32>(q) - vec4<f32>(m1);
}
