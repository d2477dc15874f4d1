// The 6-bit scales and mins of Q4_K and Q5_K super-blocks (12 bytes from word 1 of the block
// at `base`), as ggml's get_scale_min_k4 unpacks them. Prepended to both loaders.
fn k4_byte(base: u32, i: u32) -> u32 {
    return (w[base + 1u + i / 4u] >> (8u * (i % 4u))) & 255u;
}

// (scale, min) number `is` of the block at `base`: ggml's get_scale_min_k4.
fn k4_scale_min(base: u32, is: u32) -> vec2<f32> {
    if (is < 4u) {
        return vec2<f32>(f32(k4_byte(base, is) & 63u), f32(k4_byte(base, is + 4u) & 63u));
    }
    let sc = (k4_byte(base, is + 4u) & 15u) | ((k4_byte(base, is - 4u) >> 6u) << 4u);
    let m = (k4_byte(base, is + 4u) >> 4u) | ((k4_byte(base, is) >> 6u) << 4u);
    return vec2<f32>(f32(sc), f32(m));
}
