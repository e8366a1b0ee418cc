// The report's splat viewer: WebGL2, no dependencies, no network. Each model is a .splat record array (32 bytes per
// Gaussian: position and linear scale as float32, RGBA and the quaternion wxyz as bytes) given as base64 in the page.
// Per Gaussian its 3-D covariance is projected to the screen (the local affine approximation of the projection, plus
// a 0.3 px low-pass, as 3DGS rasterisers do) and drawn as a quad spanning 3 standard deviations; the quads are
// sorted back to front when the view changes and blended with premultiplied alpha. Colour is the SH DC term only.
"use strict";

const VERTEX = `#version 300 es
precision highp float;
in vec2 corner;
in vec3 center;
in vec3 covA;  // xx xy xz
in vec3 covB;  // yy yz zz
in vec4 color;
uniform mat4 view;
uniform vec2 focal;
uniform vec2 viewport;
out vec4 vColor;
out vec2 vOffset;
void main() {
  vec4 cam = view * vec4(center, 1.0);
  float depth = -cam.z;
  if (depth < 0.05) { gl_Position = vec4(0.0, 0.0, 2.0, 1.0); return; }
  mat3 sigma = mat3(covA.x, covA.y, covA.z, covA.y, covB.x, covB.y, covA.z, covB.y, covB.z);
  mat3 rotation = mat3(view);
  mat3 camSigma = rotation * sigma * transpose(rotation);
  // pixel u = fx x / d, v = -fy y / d with d = -z: the Jacobian's rows (as columns of a mat3x2 in GLSL order)
  mat3 jacobian = mat3(focal.x / depth, 0.0, 0.0,
                       0.0, -focal.y / depth, 0.0,
                       focal.x * cam.x / (depth * depth), -focal.y * cam.y / (depth * depth), 0.0);
  mat3 screen = jacobian * camSigma * transpose(jacobian);
  float a = screen[0][0] + 0.3, b = screen[0][1], c = screen[1][1] + 0.3;
  float mid = 0.5 * (a + c), radius = sqrt(0.25 * (a - c) * (a - c) + b * b);
  float major = mid + radius, minor = max(mid - radius, 0.1);
  vec2 axis = abs(b) > 1e-9 ? normalize(vec2(b, major - a)) : (a >= c ? vec2(1.0, 0.0) : vec2(0.0, 1.0));
  vec2 offset = 3.0 * (corner.x * sqrt(major) * axis + corner.y * sqrt(minor) * vec2(-axis.y, axis.x));
  vec2 pixel = vec2(focal.x * cam.x / depth, -focal.y * cam.y / depth) + 0.5 * viewport + offset;
  gl_Position = vec4(2.0 * pixel.x / viewport.x - 1.0, 1.0 - 2.0 * pixel.y / viewport.y, 0.0, 1.0);
  vColor = color;
  vOffset = 3.0 * corner;
}`;

const FRAGMENT = `#version 300 es
precision highp float;
in vec4 vColor;
in vec2 vOffset;
out vec4 outColor;
void main() {
  float alpha = vColor.a * exp(-0.5 * dot(vOffset, vOffset));
  if (alpha < 1.0 / 255.0) discard;
  outColor = vec4(vColor.rgb * alpha, alpha);
}`;

function decodeSplat(base64) {
  const bytes = Uint8Array.from(atob(base64), (ch) => ch.charCodeAt(0));
  const count = bytes.length / 32;
  const floats = new Float32Array(bytes.buffer);
  const splats = { count, center: new Float32Array(3 * count), cov: new Float32Array(6 * count),
                   color: new Uint8Array(4 * count) };
  for (let i = 0; i < count; i++) {
    const s = [floats[8 * i + 3], floats[8 * i + 4], floats[8 * i + 5]];
    let [w, x, y, z] = [0, 1, 2, 3].map((k) => (bytes[32 * i + 28 + k] - 128) / 128);
    const norm = Math.hypot(w, x, y, z) || 1;
    [w, x, y, z] = [w / norm, x / norm, y / norm, z / norm];
    const r = [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
               2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
               2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)];
    const m = (row, col) => r[3 * row + col] * s[col];
    const sigma = (p, q) => m(p, 0) * m(q, 0) + m(p, 1) * m(q, 1) + m(p, 2) * m(q, 2);
    splats.center.set(floats.subarray(8 * i, 8 * i + 3), 3 * i);
    splats.cov.set([sigma(0, 0), sigma(0, 1), sigma(0, 2), sigma(1, 1), sigma(1, 2), sigma(2, 2)], 6 * i);
    splats.color.set(bytes.subarray(32 * i + 24, 32 * i + 28), 4 * i);
  }
  return splats;
}

function lookAt(eye, target, up) {
  const sub = (a, b) => a.map((v, i) => v - b[i]);
  const unit = (a) => { const n = Math.hypot(...a) || 1; return a.map((v) => v / n); };
  const cross = (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
  const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
  const back = unit(sub(eye, target)), right = unit(cross(up, back)), top = cross(back, right);
  // column-major world-to-camera (OpenGL camera: x right, y up, looking along -z)
  return new Float32Array([right[0], top[0], back[0], 0, right[1], top[1], back[1], 0, right[2], top[2], back[2], 0,
                           -dot(right, eye), -dot(top, eye), -dot(back, eye), 1]);
}

function createViewer(canvas, models, camera) {
  const gl = canvas.getContext("webgl2", { preserveDrawingBuffer: true, premultipliedAlpha: true });
  if (!gl) throw new Error("WebGL2 is not available in this browser");
  const compile = (type, source) => {
    const shader = gl.createShader(type);
    gl.shaderSource(shader, source);
    gl.compileShader(shader);
    if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(shader));
    return shader;
  };
  const program = gl.createProgram();
  gl.attachShader(program, compile(gl.VERTEX_SHADER, VERTEX));
  gl.attachShader(program, compile(gl.FRAGMENT_SHADER, FRAGMENT));
  gl.linkProgram(program);
  gl.useProgram(program);
  const vao = gl.createVertexArray();
  gl.bindVertexArray(vao);
  const cornerBuffer = gl.createBuffer();
  gl.bindBuffer(gl.ARRAY_BUFFER, cornerBuffer);
  gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]), gl.STATIC_DRAW);
  const cornerAt = gl.getAttribLocation(program, "corner");
  gl.enableVertexAttribArray(cornerAt);
  gl.vertexAttribPointer(cornerAt, 2, gl.FLOAT, false, 0, 0);
  const instanceBuffer = gl.createBuffer();
  const colorBuffer = gl.createBuffer();
  const layout = [["center", 3, 0], ["covA", 3, 3], ["covB", 3, 6]];
  gl.bindBuffer(gl.ARRAY_BUFFER, instanceBuffer);
  for (const [name, size, offset] of layout) {
    const at = gl.getAttribLocation(program, name);
    gl.enableVertexAttribArray(at);
    gl.vertexAttribPointer(at, size, gl.FLOAT, false, 36, 4 * offset);
    gl.vertexAttribDivisor(at, 1);
  }
  gl.bindBuffer(gl.ARRAY_BUFFER, colorBuffer);
  const colorAt = gl.getAttribLocation(program, "color");
  gl.enableVertexAttribArray(colorAt);
  gl.vertexAttribPointer(colorAt, 4, gl.UNSIGNED_BYTE, true, 0, 0);
  gl.vertexAttribDivisor(colorAt, 1);
  gl.enable(gl.BLEND);
  gl.blendFunc(gl.ONE, gl.ONE_MINUS_SRC_ALPHA);

  const state = { yaw: camera.yaw, pitch: camera.pitch, distance: camera.distance, model: null, frames: 0 };
  const decoded = {};
  const eye = () => {
    const c = Math.cos(state.pitch);
    return [0, 1, 2].map((k) => camera.target[k] + state.distance *
      [c * Math.cos(state.yaw), c * Math.sin(state.yaw), Math.sin(state.pitch)][k]);
  };
  function draw() {
    const splats = decoded[state.model];
    const view = lookAt(eye(), camera.target, [0, 0, 1]);
    const depth = new Float32Array(splats.count);
    for (let i = 0; i < splats.count; i++) {
      const p = splats.center.subarray(3 * i, 3 * i + 3);
      depth[i] = -(view[2] * p[0] + view[6] * p[1] + view[10] * p[2] + view[14]);
    }
    const order = Array.from(depth.keys()).sort((a, b) => depth[b] - depth[a]);
    const attributes = new Float32Array(9 * splats.count), colors = new Uint8Array(4 * splats.count);
    order.forEach((index, k) => {
      attributes.set(splats.center.subarray(3 * index, 3 * index + 3), 9 * k);
      attributes.set(splats.cov.subarray(6 * index, 6 * index + 6), 9 * k + 3);
      colors.set(splats.color.subarray(4 * index, 4 * index + 4), 4 * k);
    });
    gl.bindBuffer(gl.ARRAY_BUFFER, instanceBuffer);
    gl.bufferData(gl.ARRAY_BUFFER, attributes, gl.DYNAMIC_DRAW);
    gl.bindBuffer(gl.ARRAY_BUFFER, colorBuffer);
    gl.bufferData(gl.ARRAY_BUFFER, colors, gl.DYNAMIC_DRAW);
    gl.viewport(0, 0, canvas.width, canvas.height);
    gl.clearColor(camera.background[0], camera.background[1], camera.background[2], 1);
    gl.clear(gl.COLOR_BUFFER_BIT);
    const scale = canvas.width / camera.width;
    gl.uniformMatrix4fv(gl.getUniformLocation(program, "view"), false, view);
    gl.uniform2f(gl.getUniformLocation(program, "focal"), camera.fx * scale, camera.fy * scale);
    gl.uniform2f(gl.getUniformLocation(program, "viewport"), canvas.width, canvas.height);
    gl.drawArraysInstanced(gl.TRIANGLE_STRIP, 0, 4, splats.count);
    state.frames += 1;
    canvas.dataset.frames = String(state.frames);
  }
  function show(name) {
    decoded[name] = decoded[name] || decodeSplat(models[name]);
    state.model = name;
    draw();
  }
  let drag = null;
  canvas.addEventListener("pointerdown", (e) => { drag = [e.clientX, e.clientY]; canvas.setPointerCapture(e.pointerId); });
  canvas.addEventListener("pointerup", () => { drag = null; });
  canvas.addEventListener("pointermove", (e) => {
    if (!drag) return;
    state.yaw -= 0.01 * (e.clientX - drag[0]);
    state.pitch = Math.max(-1.5, Math.min(1.5, state.pitch + 0.01 * (e.clientY - drag[1])));
    drag = [e.clientX, e.clientY];
    draw();
  });
  canvas.addEventListener("wheel", (e) => { e.preventDefault(); state.distance *= Math.exp(0.001 * e.deltaY); draw(); });
  return { show, state };
}
