// Weight loader: Q4_1 blocks of 32 values copied as they are (20 bytes, 5 words: f16 d and f16
// m, then 16 bytes of nibbles in ggml's order: byte j holds value j low, value j + 16 high).
// P.w_row: blocks per row. `k` is a multiple of 4: the four values share one word.
fn w_load4(row: u32, k: u32) -> vec4<f32> {
    let base = (row * P.w_row + k / 32u) * 5u;
    let kin = k % 32u;
    let dm = unpack2x16float(w[base]);
    let word = w[base + 1u + (kin % 16u) / 4u];
    let sh = select(0u, 4u, kin >= 16u);
    let q = vec4<u32>(word >> sh, word >> (sh + 8u), word >> (sh + 16u), word >> (sh + 24u)) & vec4<u32>(15u);
    return vec4<f32>(q) * dm.x + vec4<f32>(dm.y);
}
