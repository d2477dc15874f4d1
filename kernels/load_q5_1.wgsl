// Weight loader: Q5_1 blocks of 32 values copied as they are (24 bytes, 6 words: f16 d and f16
// m, the 32 high bits `qh`, then 16 bytes of low nibbles in ggml's order). Value j's fifth bit
// is bit j of qh. P.w_row: blocks per row. `k` is a multiple of 4.
fn w_load4(row: u32, k: u32) -> vec4<f32> {
    let base = (row * P.w_row + k / 32u) * 6u;
    let kin = k % 32u;
    let dm = unpack2x16float(w[base]);
    let qh = w[base + 1u] >> kin;
    let word = w[base + 2u + (kin % 16u) / 4u];
    let sh = select(0u, 4u, kin >= 16u);
    let lo = vec4<u32>(word >> sh, word >> (sh + 8u), word >> (sh + 16u), word >> (sh + 24u)) & vec4<u32>(15u);
    let hi = (vec4<u32>(qh, qh >> 1u, qh >> 2u, qh >> 3u) & vec4<u32>(1u)) << vec4<u32>(4u);
    return vec4<f32>(lo | hi) * dm.x + vec4<f32>(dm.y);
}
