// The archive at a glance: GET api/files and api/health, the files as a tree, downloads
// fetched through the ranged endpoint (8 MiB per request) with the token when one is set.
"use strict";

const STEP = 8 * 1024 * 1024;
const $ = (id) => document.getElementById(id);

function headers() {
  const token = sessionStorage.getItem("blockframe-token");
  return token ? { Authorization: "Bearer " + token } : {};
}

function fileUrl(name) {
  return "api/files/" + name.split("/").map(encodeURIComponent).join("/");
}

function formatSize(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? n + " B" : n.toFixed(1) + " " + units[i];
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

async function getJson(path) {
  const r = await fetch(path, { headers: headers() });
  if (r.status === 401) throw Object.assign(new Error("unauthorized"), { status: 401 });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

// Download in ranges; the bytes are assembled in memory and saved under the base name.
async function download(link, file) {
  link.classList.add("busy");
  const label = link.textContent;
  try {
    const parts = [];
    for (let start = 0; start < file.size; start += STEP) {
      const end = Math.min(file.size, start + STEP) - 1;
      link.textContent = Math.floor((100 * start) / file.size) + "%";
      const r = await fetch(fileUrl(file.name), {
        headers: Object.assign({ Range: "bytes=" + start + "-" + end }, headers()),
      });
      if (r.status !== 206) throw new Error(file.name + ": HTTP " + r.status);
      const blob = await r.blob();
      if (blob.size !== end - start + 1) throw new Error(file.name + ": short answer");
      parts.push(blob);
    }
    const url = URL.createObjectURL(new Blob(parts, { type: "application/octet-stream" }));
    const a = el("a");
    a.href = url;
    a.download = file.name.split("/").pop();
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (e) {
    showError(String(e.message || e));
  } finally {
    link.textContent = label;
    link.classList.remove("busy");
  }
}

function fileRow(file, label) {
  const row = el("div", "row file");
  row.dataset.name = file.name;
  // The latest scrub says more than the manifest status: healthy / repaired / damaged, and
  // how many more shards per stripe may fail (the margin).
  const scrub = file.scrub;
  let text = file.status, kind = file.status === "ok" ? "ok" : "other", title = "not scrubbed yet";
  if (scrub) {
    text = scrub.status + (scrub.margin === null ? "" : " · margin " + scrub.margin);
    kind = scrub.status === "healthy" || scrub.status === "repaired" ? "ok" : "bad";
    title = "last scrub " + new Date(scrub.at).toLocaleString();
  }
  const status = el("span", "status " + kind, text);
  status.title = title;
  row.append(el("span", "name", label), el("span", "size", formatSize(file.size)),
             el("span", "tier", String(file.tier)), status);
  const get = el("span", "get");
  const a = el("a", "", "Download");
  a.href = fileUrl(file.name);
  a.addEventListener("click", (ev) => { ev.preventDefault(); download(a, file); });
  get.append(a);
  row.append(get);
  return row;
}

function buildTree(files) {
  const root = { dirs: new Map(), files: [] };
  for (const f of files) {
    const parts = f.name.split("/");
    let node = root;
    for (const p of parts.slice(0, -1)) {
      if (!node.dirs.has(p)) node.dirs.set(p, { dirs: new Map(), files: [] });
      node = node.dirs.get(p);
    }
    node.files.push([parts[parts.length - 1], f]);
  }
  return root;
}

function totals(node) {
  let n = node.files.length, bytes = node.files.reduce((s, [, f]) => s + f.size, 0);
  for (const d of node.dirs.values()) { const [a, b] = totals(d); n += a; bytes += b; }
  return [n, bytes];
}

function render(node, ul) {
  for (const [name, dir] of [...node.dirs].sort((a, b) => a[0].localeCompare(b[0]))) {
    const li = el("li", "dir");
    const details = el("details");
    details.open = true;
    const summary = el("summary");
    const [n, bytes] = totals(dir);
    const row = el("div", "row");
    row.append(el("span", "name", name + "/"), el("span", "size", formatSize(bytes)),
               el("span", "tier"), el("span", "status", n + (n === 1 ? " file" : " files")),
               el("span", "get"));
    summary.append(row);
    const sub = el("ul");
    render(dir, sub);
    details.append(summary, sub);
    li.append(details);
    ul.append(li);
  }
  for (const [label, file] of node.files.sort((a, b) => a[0].localeCompare(b[0]))) {
    const li = el("li", "file");
    li.append(fileRow(file, label));
    ul.append(li);
  }
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

async function load() {
  showError("");
  try {
    const [files, health] = await Promise.all([getJson("api/files"), getJson("api/health")]);
    $("auth").hidden = true;
    const tree = $("tree");
    tree.replaceChildren();
    render(buildTree(files), tree);
    const scrub = health.last_scrub ? new Date(health.last_scrub).toLocaleString() : "never";
    $("summary").textContent =
      health.objects + " files, " + formatSize(health.bytes) + " · last scrub: " + scrub +
      (health.problems ? " · " + health.problems + " unusable entries" : "");
    document.body.dataset.loaded = "true";
  } catch (e) {
    if (e.status === 401) {
      $("summary").textContent = "";
      $("auth").hidden = false;
      $("token").focus();
    } else {
      showError(String(e.message || e));
    }
  }
}

$("auth").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("blockframe-token", $("token").value);
  load();
});
load();
