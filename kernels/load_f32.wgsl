// Weight loader: f32 rows (weights padded to a multiple of 32 with zeros; activations not padded).
// P.w_off: element offset of row 0; P.w_row: elements per row. Reads past the row give 0.
fn w_load4(row: u32, k: u32) -> vec4<f32> {
    let i = P.w_off + row * P.w_row + k;
    var v = vec4<f32>(0.0);
    for (var c = 0u; c < 4u; c++) {
        if (k + c < P.w_row) {
            v[c] = bitcast<f32>(w[i + c]);
        }
    }
    return v;
}
