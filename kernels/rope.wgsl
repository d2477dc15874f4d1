// Rotary position embedding over the first n_dims values of each head of hd values: pair p
// (p < n_dims / 2) rotates by pos * theta^(-2p / n_dims); the rest is copied. Which values form
// pair p: NORM mode (neox = 0: LLaMA as llama.cpp converts it) the adjacent 2p and 2p + 1; NEOX
// mode (neox = 1: Qwen2, Dream) p and p + n_dims / 2. x [hd, heads, n], pos i32 [n]; one thread
// per pair (hd / 2 pairs per head; past n_dims / 2 a thread copies two values).

struct Params {
    hd: u32, heads: u32, n: u32, groups_x: u32,
    x_off: u32, y_off: u32, pos_off: u32, n_dims: u32,
    theta: f32, neox: u32, _pad1: u32, _pad2: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> pos: array<i32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = (wid.y * P.groups_x + wid.x) * 256u + lid;
    let pairs = P.hd / 2u;
    if (t >= pairs * P.heads * P.n) {
        return;
    }
    let p = t % pairs;
    let token = t / (pairs * P.heads);
    let head = (t / pairs) * P.hd; // the head's first value (hd is even)
    let half = P.n_dims / 2u;
    if (p >= half) {
        // Past the rotated dimensions both modes copy: values n_dims + 2(p - half) and the next.
        let i = head + 2u * p;
        y[P.y_off + i] = x[P.x_off + i];
        y[P.y_off + i + 1u] = x[P.x_off + i + 1u];
        return;
    }
    var i0 = head + 2u * p;
    var i1 = i0 + 1u;
    if (P.neox != 0u) {
        i0 = head + p;
        i1 = head + p + half;
    }
    let x0 = x[P.x_off + i0];
    let x1 = x[P.x_off + i1];
    let angle = f32(pos[P.pos_off + token]) * pow(P.theta, -f32(2u * p) / f32(P.n_dims));
    let c = cos(angle);
    let s = sin(angle);
    y[P.y_off + i0] = x0 * c - x1 * s;
    y[P.y_off + i1] = x0 * s + x1 * c;
}
