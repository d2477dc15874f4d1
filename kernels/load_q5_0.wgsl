// Weight loader: Q5_0 blocks of 32 values, split at upload into 5 words per block (the 32 high
// bits `qh`, then 16 bytes of low nibbles in ggml's order) followed by every block's f16 scale,
// two per u32, from word P.w_sc. Value j's fifth bit is bit j of qh. P.w_row: blocks per row.
// `k` is a multiple of 4: the four values share one nibble word and one scale.
fn w_load4(row: u32, k: u32) -> vec4<f32> {
    let b = row * P.w_row + k / 32u;
    let kin = k % 32u;
    let qh = w[b * 5u] >> kin;
    let word = w[b * 5u + 1u + (kin % 16u) / 4u];
    let sh = select(0u, 4u, kin >= 16u);
    let d = unpack2x16float(w[P.w_sc + b / 2u])[b & 1u];
    let lo = vec4<u32>(word >> sh, word >> (sh + 8u), word >> (sh + 16u), word >> (sh + 24u)) & vec4<u32>(15u);
    let hi = (vec4<u32>(qh, qh >> 1u, qh >> 2u, qh >> 3u) & vec4<u32>(1u)) << vec4<u32>(4u);
    return (vec4<f32>(lo | hi) - vec4<f32>(16.0)) * d;
}
