/* FlashSale proof-of-work solver, run as a dedicated Worker by app.js so the page stays responsive.
 *
 * An anonymous sale may price each new place (waiting_room/pow.py): the join answers 403 with
 * an ALTCHA v2 challenge, algorithm "SHA-256": find the counter for which SHA-256, iterated
 * `cost` times over salt + nonce + counter (big-endian uint32), starts with the hex
 * `keyPrefix`. The page sends {challenge}; this worker answers {type: "progress", tried,
 * expected} now and then, and {type: "solved", payload, ms} with the base64 payload the join
 * sends back in X-Proof-Of-Work (or {type: "failed"}).
 *
 * SHA-256 is written out here (FIPS 180-4, one 64-byte block: every message hashed is 36 or 32
 * bytes) because it is what a phone's time goes into: measured in headless Chromium on this
 * project's machine, crypto.subtle.digest managed 60,000 hashes a second (a promise per hash),
 * the js-sha256 library 470,000, this function 1,550,000. The server checks every solution
 * with Python's hashlib, so a mistake here could only fail to solve, never pass a wrong one.
 */
"use strict";

const K = new Int32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);
const H0 = new Int32Array([
  0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
]);
const W = new Int32Array(64);

/* The SHA-256 compression of the block in W[0..15] (already padded) into `out` (8 words). */
function compress(out) {
  for (let i = 16; i < 64; i++) {
    const a = W[i - 15], b = W[i - 2];
    const s0 = ((a >>> 7) | (a << 25)) ^ ((a >>> 18) | (a << 14)) ^ (a >>> 3);
    const s1 = ((b >>> 17) | (b << 15)) ^ ((b >>> 19) | (b << 13)) ^ (b >>> 10);
    W[i] = (W[i - 16] + s0 + W[i - 7] + s1) | 0;
  }
  let a = H0[0], b = H0[1], c = H0[2], d = H0[3], e = H0[4], f = H0[5], g = H0[6], h = H0[7];
  for (let i = 0; i < 64; i++) {
    const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
    const t1 = (h + S1 + ((e & f) ^ (~e & g)) + K[i] + W[i]) | 0;
    const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
    const t2 = (S0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
    h = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
  }
  out[0] = (a + H0[0]) | 0; out[1] = (b + H0[1]) | 0; out[2] = (c + H0[2]) | 0;
  out[3] = (d + H0[3]) | 0; out[4] = (e + H0[4]) | 0; out[5] = (f + H0[5]) | 0;
  out[6] = (g + H0[6]) | 0; out[7] = (h + H0[7]) | 0;
}

function words(hex) { // 32 hex digits -> 4 big-endian words
  const w = [];
  for (let i = 0; i < hex.length; i += 8) w.push(parseInt(hex.slice(i, i + 8), 16) | 0);
  return w;
}

function hexOf(out) {
  let hex = "";
  for (let i = 0; i < 8; i++) hex += (out[i] >>> 0).toString(16).padStart(8, "0");
  return hex;
}

function solve(challenge) {
  const p = challenge.parameters;
  if (p.algorithm !== "SHA-256" || p.salt.length !== 32 || p.nonce.length !== 32
      || (p.keyLength || 32) !== 32) {
    return null; // not the kind of challenge this page solves
  }
  const salt = words(p.salt), nonce = words(p.nonce);
  const prefix = Array.from(p.keyPrefix.toLowerCase(), (ch) => parseInt(ch, 16));
  const cost = Math.max(1, p.cost | 0);
  const expected = 16 ** prefix.length;
  const out = new Int32Array(8);
  const started = performance.now();
  for (let counter = 0; counter <= 0xffffffff; counter++) {
    // salt (16 bytes) + nonce (16) + counter (4) = 36 bytes, padded to one block
    W[0] = salt[0]; W[1] = salt[1]; W[2] = salt[2]; W[3] = salt[3];
    W[4] = nonce[0]; W[5] = nonce[1]; W[6] = nonce[2]; W[7] = nonce[3];
    W[8] = counter | 0; W[9] = 0x80000000 | 0;
    W[10] = 0; W[11] = 0; W[12] = 0; W[13] = 0; W[14] = 0; W[15] = 36 * 8;
    compress(out);
    for (let round = 1; round < cost; round++) { // the next rounds hash the 32-byte digest
      for (let i = 0; i < 8; i++) W[i] = out[i];
      W[8] = 0x80000000 | 0; W[9] = 0; W[10] = 0; W[11] = 0; W[12] = 0; W[13] = 0; W[14] = 0;
      W[15] = 32 * 8;
      compress(out);
    }
    let found = true;
    for (let i = 0; i < prefix.length; i++) {
      if (((out[i >> 3] >>> (28 - 4 * (i & 7))) & 0xf) !== prefix[i]) { found = false; break; }
    }
    if (found) {
      const solution = { counter, derivedKey: hexOf(out) };
      const payload = btoa(JSON.stringify({ challenge, solution }));
      return { payload, ms: performance.now() - started, tried: counter + 1 };
    }
    if ((counter & 0xffff) === 0xffff) {
      postMessage({ type: "progress", tried: counter + 1, expected });
    }
  }
  return null;
}

self.onmessage = (event) => {
  const result = solve(event.data.challenge);
  postMessage(result ? { type: "solved", ...result } : { type: "failed" });
};
