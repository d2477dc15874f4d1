// Weight loader: f16 rows, two per u32, rows padded to a multiple of 32 values.
// P.w_row: values per row. `k` is a multiple of 4.
fn w_load4(row: u32, k: u32) -> vec4<f32> {
    let h = (row * P.w_row + k) / 2u;
    let a = unpack2x16float(w[h]);
    let b = unpack2x16float(w[h + 1u]);
    return vec4<f32>(a.x, a.y, b.x, b.y);
}
