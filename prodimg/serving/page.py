"""The web page served at ``GET /``: one self-contained HTML document (no external resources).

The page holds no data: it calls ``POST /v1/images/generations`` with the API key the user types
(kept in ``sessionStorage``, so it is forgotten when the tab closes) and shows the images with
download links, or the service's error message. A Content-Security-Policy allows only this page's
own inline script and style (by hash), same-origin requests and ``data:``/``blob:`` images.
"""

from __future__ import annotations

import base64
import hashlib

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; padding: 0 1rem; color: #222; }
h1 { font-size: 1.4rem; }
form { display: grid; grid-template-columns: 9rem 1fr; gap: .5rem 1rem; align-items: center; }
textarea { min-height: 3rem; }
button { grid-column: 2; justify-self: start; padding: .4rem 1.2rem; }
#error { color: #a00; margin: 1rem 0; min-height: 1.2rem; white-space: pre-wrap; }
#status { color: #555; }
#results { display: grid; grid-template-columns: repeat(auto-fill, minmax(9rem, 1fr)); gap: 1rem; }
figure { margin: 0; border: 1px solid #ddd; padding: .5rem; text-align: center; }
figure img { width: 8rem; height: 8rem; image-rendering: pixelated; display: block; margin: 0 auto .3rem; }
figcaption { font-size: .8rem; }
"""

SCRIPT = """
"use strict";
const $ = (id) => document.getElementById(id);
const KEY = "prodimg.apiKey";
$("api-key").value = sessionStorage.getItem(KEY) || "";
$("api-key").addEventListener("input", () => sessionStorage.setItem(KEY, $("api-key").value.trim()));

function slug(text) {
  return text.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 40) || "image";
}

function showError(message) {
  $("error").textContent = message;
}

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("");
  const prompt = $("prompt").value.trim();
  const body = { prompt: prompt, n: Number($("n").value), response_format: "b64_json" };
  if ($("seed").value.trim() !== "") body.seed = Number($("seed").value);
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers["Authorization"] = "Bearer " + key;
  $("generate").disabled = true;
  $("status").textContent = "Generating…";
  try {
    const response = await fetch("v1/images/generations", { method: "POST", headers, body: JSON.stringify(body) });
    let payload = null;
    try { payload = await response.json(); } catch (e) { payload = null; }
    if (!response.ok) {
      const message = payload && payload.error ? payload.error.message : response.statusText;
      showError(`Error ${response.status}: ${message}`);
      $("status").textContent = "";
      return;
    }
    $("status").textContent = `Seed ${payload.seed}: ${payload.data.length} image(s)`;
    const grid = $("results");
    grid.replaceChildren();
    for (const item of payload.data) {
      const src = "data:image/png;base64," + item.b64_json;
      const figure = document.createElement("figure");
      figure.className = "result";
      const img = document.createElement("img");
      img.src = src;
      img.alt = `${prompt} (seed ${item.seed})`;
      const link = document.createElement("a");
      link.href = src;
      link.download = `${slug(prompt)}-seed${item.seed}.png`;
      link.textContent = "Download";
      const caption = document.createElement("figcaption");
      caption.append(`seed ${item.seed} · `, link);
      figure.append(img, caption);
      grid.append(figure);
    }
  } catch (err) {
    showError("Request failed: " + err);
    $("status").textContent = "";
  } finally {
    $("generate").disabled = false;
  }
});
"""

INDEX_HTML = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>prodimg: product images from text</title>
<style>{STYLE}</style>
</head>
<body>
<h1>prodimg: product images from text</h1>
<form id="form">
  <label for="api-key">API key</label>
  <input id="api-key" type="password" autocomplete="off" placeholder="pik_… (kept for this tab only)">
  <label for="prompt">Prompt</label>
  <textarea id="prompt" required maxlength="2000" placeholder="red striped dress"></textarea>
  <label for="n">Number of images</label>
  <input id="n" type="number" min="1" max="8" value="4">
  <label for="seed">Seed</label>
  <input id="seed" type="number" min="0" step="1" placeholder="random">
  <button id="generate" type="submit">Generate</button>
</form>
<p id="status" aria-live="polite"></p>
<div id="error" role="alert"></div>
<div id="results"></div>
<script>{SCRIPT}</script>
</body>
</html>
"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


CONTENT_SECURITY_POLICY = (
    "default-src 'none'; "
    f"script-src {_csp_hash(SCRIPT)}; "
    f"style-src {_csp_hash(STYLE)}; "
    "img-src data: blob:; connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)

PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
