// y = op(a, b) elementwise over a's shape [ne0, ne1, ne2]; b broadcasts along every
// dimension where its extent is 1 (b0, b1, b2). OP (set when the pipeline is made):
// 0 add, 1 mul, 2 swiglu (silu(a) * b), 3 gelu(a) (b unused) as ggml's CPU computes it: the
// tanh approximation of the input rounded to f16, rounded to f16 (ggml's lookup table).

struct Params {
    ne0: u32, ne1: u32, ne2: u32, groups_x: u32,
    b0: u32, b1: u32, b2: u32, a_off: u32,
    b_off: u32, y_off: u32, _pad0: u32, _pad1: u32,
}

override OP: u32 = 0u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * P.groups_x + wid.x) * 256u + lid;
    if (i >= P.ne0 * P.ne1 * P.ne2) {
        return;
    }
    let i0 = i % P.ne0;
    let i1 = (i / P.ne0) % P.ne1;
    let i2 = i / (P.ne0 * P.ne1);
    let bi = (i0 % P.b0) + ((i1 % P.b1) + (i2 % P.b2) * P.b1) * P.b0;
    let av = a[P.a_off + i];
    let bv = b[P.b_off + bi];
    var r: f32;
    switch OP {
        case 0u: { r = av + bv; }
        case 1u: { r = av * bv; }
        case 2u: { r = av / (1.0 + exp(-av)) * bv; }
        default: { r = gelu_f16(av); }
    }
    y[P.y_off + i] = r;
}

fn to_f16(v: f32) -> f32 {
    return unpack2x16float(pack2x16float(vec2<f32>(v, 0.0))).x;
}

fn gelu_f16(v: f32) -> f32 {
    if (v <= -10.0) {
        return 0.0;
    }
    if (v >= 10.0) {
        return v;
    }
    let h = to_f16(v);
    let g = 0.5 * h * (1.0 + tanh(0.7978845608028654 * h * (1.0 + 0.044715 * h * h)));
    return to_f16(g);
}
