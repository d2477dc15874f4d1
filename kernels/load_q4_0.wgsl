// Weight loader: Q4_0 blocks of 32 values, split at upload into 4 u32 of nibbles per block
// (ggml's byte order: byte j holds value j in its low nibble and value j + 16 in its high one),
// then every block's f16 scale, two per u32, from word P.w_sc. P.w_row: blocks per row.
// `k` is a multiple of 4: the four values share one word and one scale.
fn w_load4(row: u32, k: u32) -> vec4<f32> {
    let b = row * P.w_row + k / 32u;
    let kin = k % 32u;
    let word = w[b * 4u + (kin % 16u) / 4u];
    let sh = select(0u, 4u, kin >= 16u);
    let d = unpack2x16float(w[P.w_sc + b / 2u])[b & 1u];
    let q = vec4<u32>(word >> sh, word >> (sh + 8u), word >> (sh + 16u), word >> (sh + 24u)) & vec4<u32>(15u);
    return (vec4<f32>(q) - vec4<f32>(8.0)) * d;
}
