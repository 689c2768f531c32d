// The Open Hosting dashboard: a small front end over the API itself. It signs in once for a
// session cookie (HttpOnly: this script never sees it, nor keeps the key), then calls the
// same commands as every client, in JSON, with the session's CSRF token on every change.
"use strict";

const state = { user: null, csrf: null };

// -- talking to the daemon ---------------------------------------------------------------

class ApiError extends Error {
  constructor(status, kind, message) {
    super(message);
    this.status = status;
    this.kind = kind;
  }
}

// One API request; its JSON answer (null for 204). A failure throws ApiError carrying the
// API's own words: its X-Elastic-Error type and one-line text.
async function api(path, { method = "GET", body = undefined, headers = {} } = {}) {
  const init = {
    method,
    credentials: "same-origin",
    headers: { Accept: "application/json", "X-Requested-With": "openhosting-dashboard", ...headers },
  };
  if (method !== "GET" && method !== "HEAD") init.headers["X-CSRF-Token"] = state.csrf || "";
  if (body !== undefined) {
    if (body instanceof Blob || body instanceof ArrayBuffer || ArrayBuffer.isView(body)) {
      init.body = body;
    } else {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, "network", `The platform could not be reached: ${error.message}`);
  }
  if (!response.ok) {
    const text = (await response.text()).trim();
    const kind = response.headers.get("X-Elastic-Error") || "error";
    if (response.status === 401 && state.user && path !== "/dashboard/session") signedOut();
    throw new ApiError(response.status, kind, text || `${response.status} ${response.statusText}`);
  }
  if (response.status === 204) return null;
  const type = response.headers.get("Content-Type") || "";
  return type.includes("json") ? response.json() : response.text();
}

// The info of one object at `path` shown again with `place`, or its row taken away with
// `remove` when the object is gone (404).
async function refreshInfo(path, place, remove) {
  try {
    place(await api(path));
  } catch (error) {
    if (error.status === 404) remove();
    else throw error;
  }
}

// The infos of a list (`/servers/info`, `/drives/info`, …), sorted by name.
async function infosByName(path) {
  const infos = await api(path);
  infos.sort((a, b) => (a.name || "").localeCompare(b.name || ""));
  return infos;
}

// -- what the page shows -----------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function showError(error) {
  const box = $("error");
  if (!error) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  const kind = error.kind ? `${error.status || ""} ${error.kind}: `.trimStart() : "";
  box.textContent = kind + (error.message || String(error));
  box.hidden = false;
}

// Run an action of the user's, showing what went wrong instead of failing silently.
async function attempt(action) {
  showError(null);
  try {
    return await action();
  } catch (error) {
    showError(error);
    return undefined;
  }
}

// Work the page does by itself (a live update): a failure is shown, nothing else is cleared.
async function background(action) {
  try {
    return await action();
  } catch (error) {
    showError(error);
    return undefined;
  }
}

// Make an element: el("td", {class: "x"}, "text", child, ...).
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

// A table's body shows `rows`; its empty notice (`empty`, an element's id) shows when none.
function showRows(body, rows, empty) {
  body.replaceChildren(...rows);
  $(empty).hidden = rows.length > 0;
}

// The row `selector` leaves a table's body; the empty notice shows if it was the last.
function removeRow(body, selector, empty) {
  body.querySelector(selector)?.remove();
  $(empty).hidden = body.children.length > 0;
}

// No prototype: `#constructor` or `#__proto__` in the address must not name a section.
const sections = Object.create(null);

function showSection(name) {
  for (const section of document.querySelectorAll("main > section")) {
    section.hidden = section.id !== `${name}-section`;
  }
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.getAttribute("href") === `#${name}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  // Keyboard and screen reader users land on the new section's heading.
  const heading = document.querySelector(`#${name}-section h2`);
  if (heading && name !== "sign-in") {
    heading.setAttribute("tabindex", "-1");
    heading.focus();
  }
  const show = sections[name];
  if (show) attempt(show);
}

function route() {
  if (!state.user) {
    showSection("sign-in");
    $("sign-in-user").focus();
    return;
  }
  const name = location.hash.slice(1) || "servers";
  showSection(sections[name] ? name : "servers");
}

// -- signing in and out --------------------------------------------------------------------

function signedIn(session) {
  state.user = session.user;
  state.csrf = session.csrf;
  $("who-user").textContent = `Signed in as ${session.user}`;
  $("who").hidden = false;
  $("nav").hidden = false;
  for (const start of signInHooks) start();
  route();
}

function signedOut() {
  state.user = null;
  state.csrf = null;
  $("who").hidden = true;
  $("nav").hidden = true;
  for (const stop of signOutHooks) stop();
  route();
}

const signInHooks = [];
const signOutHooks = [];

$("sign-in").addEventListener("submit", (event) => {
  event.preventDefault();
  attempt(async () => {
    const user = $("sign-in-user").value.trim();
    const key = $("sign-in-key").value;
    const session = await api("/dashboard/session", { method: "POST", body: { user, key } });
    $("sign-in-key").value = ""; // the key is not kept: the session cookie stands for it
    signedIn(session);
  });
});

$("sign-out").addEventListener("click", () =>
  attempt(async () => {
    await api("/dashboard/session/end", { method: "POST" });
    signedOut();
  }),
);

window.addEventListener("hashchange", () => {
  if (state.user) route();
});

async function resume() {
  try {
    signedIn(await api("/dashboard/session"));
  } catch (error) {
    signedOut();
  }
}

document.addEventListener("DOMContentLoaded", resume);

// -- live changes: the platform's own event feed, for this session's user only ---------------

const eventListeners = [];
let feed = null;

function onPlatformEvent(listener) {
  eventListeners.push(listener);
}

signInHooks.push(() => {
  if (feed) feed.close();
  feed = new EventSource("/events"); // same origin: the session cookie goes with it
  for (const type of ["server", "drive", "resource"]) {
    feed.addEventListener(type, (message) => {
      const data = JSON.parse(message.data);
      for (const listener of eventListeners) listener(data);
    });
  }
  feed.addEventListener("open", () => {
    $("servers-live").textContent = "Live: changes appear without reloading.";
  });
  feed.addEventListener("error", () => {
    $("servers-live").textContent = "Live updates interrupted; reconnecting…";
  });
});

signOutHooks.push(() => {
  if (feed) feed.close();
  feed = null;
});

// -- servers -----------------------------------------------------------------------------

function statusCell(status) {
  return el("td", { class: `status status-${status}`, "data-status": status }, status);
}

function addresses(server) {
  const found = [];
  for (const nic of ["0", "1"]) {
    const ip = server[`nic:${nic}:dhcp:ip`];
    if (ip) found.push(`nic ${nic}: ${ip}`);
    const vlan = server[`nic:${nic}:vlan`];
    if (vlan) found.push(`nic ${nic}: VLAN ${vlan}`);
  }
  if (server["vnc:ip"] && server.status === "active") {
    const port = server["vnc:port"] ? `:${server["vnc:port"]}` : "";
    found.push(`VNC ${server["vnc:ip"]}${port}`);
  }
  return found.length ? found.join(", ") : "—";
}

function serverAction(server, label, command, { danger = false, confirmText = null } = {}) {
  const name = server.name || server.server;
  return el(
    "button",
    {
      type: "button",
      class: danger ? "danger" : null,
      "data-action": command,
      "aria-label": `${label} ${name}`,
      onclick: () =>
        attempt(async () => {
          if (confirmText && !window.confirm(confirmText)) return;
          await api(`/servers/${server.server}/${command}`, { method: "POST" });
          await refreshServer(server.server);
        }),
    },
    label,
  );
}

function consoleButton(server) {
  const name = server.name || server.server;
  return el(
    "button",
    {
      type: "button",
      "data-action": "console",
      "aria-label": `Console of ${name}`,
      onclick: () =>
        attempt(async () => {
          const ticket = await api(`/servers/${server.server}/console`, { method: "POST" });
          window.open(ticket.url, "_blank", "noopener");
        }),
    },
    "Console",
  );
}

function serverActions(server) {
  const name = server.name || server.server;
  const running = server.status === "active" || server.status === "paused";
  const buttons = [];
  if (!running || server.status === "paused") buttons.push(serverAction(server, "Start", "start"));
  if (running) {
    buttons.push(serverAction(server, "Shutdown", "shutdown"));
    buttons.push(serverAction(server, "Stop", "stop"));
    buttons.push(serverAction(server, "Reset", "reset"));
    if (server["vnc:password"] && server.status === "active") buttons.push(consoleButton(server));
  }
  buttons.push(
    serverAction(server, "Destroy", "destroy", {
      danger: true,
      confirmText: `Destroy server ${name}? Its drives are kept.`,
    }),
  );
  return el("td", { class: "actions" }, buttons);
}

function serverRow(server) {
  return el(
    "tr",
    { "data-server": server.server },
    el("th", { scope: "row" }, server.name || server.server),
    statusCell(server.status),
    el("td", {}, String(server.cpu)),
    el("td", {}, String(server.mem)),
    el("td", { class: "addresses" }, addresses(server)),
    serverActions(server),
  );
}

function serversBody() {
  return document.querySelector("#servers tbody");
}

function placeServer(server) {
  const old = serversBody().querySelector(`tr[data-server="${server.server}"]`);
  const row = serverRow(server);
  if (old) old.replaceWith(row);
  else serversBody().append(row);
  $("servers-empty").hidden = true;
}

function removeServer(uuid) {
  removeRow(serversBody(), `tr[data-server="${uuid}"]`, "servers-empty");
}

function refreshServer(uuid) {
  return refreshInfo(`/servers/${uuid}/info`, placeServer, () => removeServer(uuid));
}

async function showServers() {
  const servers = await infosByName("/servers/info");
  showRows(serversBody(), servers.map(serverRow), "servers-empty");
}

sections.servers = showServers;

onPlatformEvent((event) => {
  if (event.type !== "server" || !state.user) return;
  if (event.change === "destroyed") {
    removeServer(event.object);
    return;
  }
  const row = serversBody().querySelector(`tr[data-server="${event.object}"]`);
  if (event.change === "status" && row) {
    row.querySelector(".status").replaceWith(statusCell(event.status)); // at once
  }
  background(() => refreshServer(event.object)); // then its addresses, buttons, …
});

// -- imaging: a copy into a drive, followed until it ends ------------------------------------

function formatBytes(bytes) {
  const units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let value = Number(bytes);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} bytes` : `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

const imagingWatchers = new Map(); // drive UUID → its watcher's event handler

onPlatformEvent((event) => {
  if (event.type === "drive" && event.change === "imaging") {
    const watcher = imagingWatchers.get(event.object);
    if (watcher) watcher(event);
  }
});

// Follow the imaging of `drive` (from its events, and its info every 2 s should an event be
// missed) until it ends; `progress` is told "queued" or "NN%" on the way. Start it before
// asking for the imaging, so that no event goes by unseen; `cancel` if the ask fails.
function followImaging(drive, progress) {
  let timer = null;
  let settle = null;
  const done = new Promise((resolve, reject) => {
    settle = (error) => {
      clearInterval(timer);
      imagingWatchers.delete(drive);
      if (error) reject(error);
      else resolve();
    };
  });
  const failed = (why) => new ApiError(500, "failed", `Imaging of drive ${drive} failed: ${why}`);
  imagingWatchers.set(drive, (event) => {
    if (event.imaging === "done") settle();
    else if (event.imaging === "failed") settle(failed(event.error || "see the drive's info"));
    else progress(event.imaging);
  });
  timer = setInterval(async () => {
    try {
      const info = await api(`/drives/${drive}/info`);
      if (info.imaging) progress(info.imaging);
      else if (info["imaging:error"]) settle(failed(info["imaging:error"]));
      else settle();
    } catch (error) {
      settle(error);
    }
  }, 2000);
  return { done, cancel: () => settle() };
}

function showProgress(bar, imaging) {
  const percent = /^(\d+)%$/.exec(imaging || "");
  if (percent) bar.value = Number(percent[1]);
  else bar.removeAttribute("value"); // queued: an indeterminate bar
  bar.setAttribute("aria-valuetext", imaging || "");
}

// -- a new server from a standard image --------------------------------------------------------

async function showCreate() {
  const images = await infosByName("/drives/info/standard");
  $("create-image").replaceChildren(
    ...images.map((image) =>
      el(
        "option",
        {
          value: image.drive,
          "data-size": String(image.rawsize || image.size),
          "data-gzip": image.format === "gzip" ? "1" : null,
        },
        `${image.name} (${formatBytes(image.rawsize || image.size)})`,
      ),
    ),
  );
  if (!images.length) throw new ApiError(0, "note", "This platform offers no standard images yet.");
}

sections.create = showCreate;

$("create").addEventListener("submit", (event) => {
  event.preventDefault();
  const submit = $("create").querySelector("button[type=submit]");
  submit.disabled = true;
  const step = (text) => {
    $("create-step").textContent = text;
  };
  attempt(async () => {
    const option = $("create-image").selectedOptions[0];
    if (!option) throw new ApiError(0, "usage", "Choose an image");
    const name = $("create-name").value.trim();
    const size = $("create-size").value.trim() || option.dataset.size;
    step("Making the drive…");
    const drive = await api("/drives/create", {
      method: "POST",
      body: { name: `${name} disk`, size },
    });
    $("create-progress").hidden = false;
    const bar = $("create-imaging");
    showProgress(bar, "queued");
    step(`Copying ${option.textContent} into drive ${drive.drive}…`);
    const imaging = followImaging(drive.drive, (imagingState) => {
      showProgress(bar, imagingState);
      step(`Copying into drive ${drive.drive}: ${imagingState}`);
    });
    const conversion = option.dataset.gzip ? "/gunzip" : "";
    try {
      await api(`/drives/${drive.drive}/image/${option.value}${conversion}`, { method: "POST" });
    } catch (error) {
      imaging.cancel();
      throw error;
    }
    await imaging.done;
    showProgress(bar, "100%");
    step("Making the server…");
    const config = {
      name,
      cpu: $("create-cpu").value,
      mem: $("create-mem").value,
      persistent: $("create-persistent").checked ? "true" : "false",
      "ide:0:0": drive.drive,
      boot: "ide:0:0",
      "nic:0:model": "virtio",
      "nic:0:dhcp": "auto",
    };
    if ($("create-vnc").value) config["vnc:password"] = $("create-vnc").value;
    const command = $("create-start").checked ? "/servers/create" : "/servers/create/stopped";
    await api(command, { method: "POST", body: config });
    step("");
    $("create-progress").hidden = true;
    $("create").reset();
    location.hash = "#servers";
  }).finally(() => {
    submit.disabled = false;
  });
});

// -- drives ------------------------------------------------------------------------------

function drivesBody() {
  return document.querySelector("#drives tbody");
}

function claims(drive) {
  if (!drive.claimed) return "—";
  // USER:KIND:HOLDER:DEVICE entries: a server's device slot, or an imaging job.
  return drive.claimed
    .split(" ")
    .map((entry) => {
      const [, kind, holder, device] = entry.split(":");
      return kind === "guest" ? `server ${holder} (${device})` : `${kind} (${device || holder})`;
    })
    .join(", ");
}

function imagingCell(drive) {
  const cell = el("td", { class: "imaging" });
  if (drive.imaging) {
    const bar = el("progress", { max: "100", "aria-label": `Imaging of ${drive.name || drive.drive}` });
    showProgress(bar, drive.imaging);
    cell.append(bar, ` ${drive.imaging}`);
  } else if (drive["imaging:error"]) {
    cell.append(`failed: ${drive["imaging:error"]}`);
  } else {
    cell.append("—");
  }
  return cell;
}

function driveAction(drive, label, run, { danger = false } = {}) {
  return el(
    "button",
    {
      type: "button",
      class: danger ? "danger" : null,
      "data-action": label.toLowerCase(),
      "aria-label": `${label} ${drive.name || drive.drive}`,
      onclick: () => attempt(run),
    },
    label,
  );
}

function driveRow(drive) {
  const name = drive.name || drive.drive;
  const path = `/drives/${drive.drive}`;
  return el(
    "tr",
    { "data-drive": drive.drive },
    el("th", { scope: "row" }, name),
    el("td", { class: "size", "data-bytes": String(drive.size) }, formatBytes(drive.size)),
    el("td", {}, drive.status || ""),
    el("td", {}, claims(drive)),
    imagingCell(drive),
    el(
      "td",
      { class: "actions" },
      driveAction(drive, "Resize", async () => {
        const size = window.prompt(`New size of ${name} (bytes, or e.g. 10G)`, String(drive.size));
        if (!size) return;
        await api(`${path}/set`, { method: "POST", body: { size: size.trim() } });
        await refreshDrive(drive.drive);
      }),
      el(
        "a",
        { href: `${path}/read`, download: `${name}.raw`, "data-action": "download" },
        "Download",
      ),
      " ",
      driveAction(
        drive,
        "Destroy",
        async () => {
          if (!window.confirm(`Destroy drive ${name}? Its data is lost.`)) return;
          await api(`${path}/destroy`, { method: "POST" });
          removeDrive(drive.drive);
        },
        { danger: true },
      ),
    ),
  );
}

// A drive as a choice of the upload form's "Into".
function uploadChoice(drive) {
  const label = `${drive.name || drive.drive} (${formatBytes(drive.size)})`;
  return el("option", { value: drive.drive }, label);
}

function placeDrive(drive) {
  for (const [body, make, key] of [
    [drivesBody(), driveRow, "data-drive"],
    [$("upload-drive"), uploadChoice, "value"],
  ]) {
    const old = body.querySelector(`[${key}="${drive.drive}"]`);
    if (old) old.replaceWith(make(drive));
    else body.append(make(drive));
  }
  $("drives-empty").hidden = true;
}

function removeDrive(uuid) {
  removeRow(drivesBody(), `tr[data-drive="${uuid}"]`, "drives-empty");
  $("upload-drive").querySelector(`option[value="${uuid}"]`)?.remove();
}

function refreshDrive(uuid) {
  return refreshInfo(`/drives/${uuid}/info`, placeDrive, () => removeDrive(uuid));
}

async function showDrives() {
  const drives = await infosByName("/drives/info");
  showRows(drivesBody(), drives.map(driveRow), "drives-empty");
  const into = $("upload-drive");
  const chosen = into.value;
  into.replaceChildren(into.options[0], ...drives.map(uploadChoice));
  into.value = chosen;
}

sections.drives = showDrives;

onPlatformEvent((event) => {
  if (event.type !== "drive" || !state.user || $("drives-section").hidden) return;
  if (event.change === "destroyed") removeDrive(event.object);
  else background(() => refreshDrive(event.object));
});

$("drive-create").addEventListener("submit", (event) => {
  event.preventDefault();
  attempt(async () => {
    const body = { size: $("drive-size").value.trim() };
    if ($("drive-name").value.trim()) body.name = $("drive-name").value.trim();
    const drive = await api("/drives/create", { method: "POST", body });
    placeDrive(drive);
    $("drive-create").reset();
  });
});

// -- upload: the upload tool's protocol, from the browser ------------------------------------
// Chunks of 5 MiB, each gzipped by the browser (CompressionStream) and written at its offset
// (POST /drives/D/write/OFFSET, Content-Encoding: gzip). A chunk that fails for want of a
// connection (or 429/5xx) is sent again after a pause; when the pauses run out, "Resume"
// goes on from the first chunk not acknowledged. Into an existing drive, a chunk whose SHA-256
// the drive already has (GET /drives/D/hash/OFFSET/SIZE) is not sent again.

const CHUNK_BYTES = 5 * 1024 * 1024;
const RETRY_PAUSES_MS = [500, 1000, 2000, 4000, 8000];
let upload = null; // {file, drive, next, skipKnown}: what Resume goes on with

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function gzipped(blob) {
  return new Response(blob.stream().pipeThrough(new CompressionStream("gzip"))).blob();
}

async function sha256Hex(blob) {
  const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
  return Array.from(new Uint8Array(digest), (byte) => byte.toString(16).padStart(2, "0")).join("");
}

function retryable(error) {
  return error.status === 0 || error.status === 429 || error.status >= 500;
}

// Send one chunk, again after a pause while the connection is down; the last error if never.
async function sendChunk(drive, offset, body) {
  for (let attempt = 0; ; attempt += 1) {
    try {
      await api(`/drives/${drive}/write/${offset}`, {
        method: "POST",
        body,
        headers: { "Content-Type": "application/octet-stream", "Content-Encoding": "gzip" },
      });
      return;
    } catch (error) {
      if (!retryable(error) || attempt >= RETRY_PAUSES_MS.length) throw error;
      $("upload-step").textContent = `Connection lost at ${formatBytes(offset)}; trying again…`;
      await sleep(RETRY_PAUSES_MS[attempt]);
    }
  }
}

async function alreadyThere(drive, offset, chunk) {
  if (!window.crypto || !crypto.subtle) return false; // not a secure context: send it all
  const theirs = await api(`/drives/${drive}/hash/${offset}/${chunk.size}`);
  return theirs.hash === (await sha256Hex(chunk));
}

async function runUpload() {
  const { file, drive } = upload;
  const bar = $("upload-bar");
  $("upload-progress").hidden = false;
  $("upload-resume").hidden = true;
  while (upload.next < file.size) {
    const offset = upload.next;
    const chunk = file.slice(offset, Math.min(file.size, offset + CHUNK_BYTES));
    if (!(upload.skipKnown && (await alreadyThere(drive, offset, chunk)))) {
      await sendChunk(drive, offset, await gzipped(chunk));
    }
    upload.next = offset + chunk.size;
    bar.value = Math.floor((100 * upload.next) / file.size);
    $("upload-step").textContent = `${formatBytes(upload.next)} of ${formatBytes(file.size)}`;
  }
  bar.value = 100;
  $("upload-step").textContent = `Uploaded ${file.name} into drive ${drive}.`;
  upload = null;
  await refreshDrive(drive);
}

function uploadFailed(error) {
  $("upload-resume").hidden = false;
  throw error;
}

$("upload").addEventListener("submit", (event) => {
  event.preventDefault();
  attempt(async () => {
    const file = $("upload-file").files[0];
    if (!file) throw new ApiError(0, "usage", "Choose a file");
    let drive = $("upload-drive").value;
    const skipKnown = Boolean(drive); // a new drive holds nothing yet
    if (!drive) {
      const made = await api("/drives/create", {
        method: "POST",
        body: { name: file.name, size: String(file.size) },
      });
      drive = made.drive;
      placeDrive(made);
    }
    upload = { file, drive, next: 0, skipKnown };
    $("upload-bar").value = 0;
    await runUpload().catch(uploadFailed);
  });
});

$("upload-resume").addEventListener("click", () =>
  attempt(async () => {
    if (upload) await runUpload().catch(uploadFailed);
  }),
);

// -- IPs and VLANs ---------------------------------------------------------------------------

function resourceRow(resource) {
  const name = resource.name || resource.resource;
  const details =
    resource.type === "ip"
      ? `netmask ${resource.netmask || "—"}, gateway ${resource.gateway || "—"}, ` +
        `nameserver ${resource.nameserver || "—"}`
      : "";
  return el(
    "tr",
    { "data-resource": resource.resource },
    el("th", { scope: "row" }, name),
    el("td", {}, resource.type),
    el("td", {}, resource.resource),
    el("td", {}, details),
    el(
      "td",
      { class: "actions" },
      el(
        "button",
        {
          type: "button",
          class: "danger",
          "data-action": "destroy",
          "aria-label": `Destroy ${resource.type} ${name}`,
          onclick: () =>
            attempt(async () => {
              if (!window.confirm(`Give up ${resource.type} ${name}?`)) return;
              await api(`/resources/${resource.type}/${resource.resource}/destroy`, {
                method: "POST",
              });
              await showResources();
            }),
        },
        "Destroy",
      ),
    ),
  );
}

async function showResources() {
  const resources = await api("/resources/info");
  showRows(document.querySelector("#resources tbody"), resources.map(resourceRow), "resources-empty");
}

sections.resources = showResources;

$("resource-create").addEventListener("submit", (event) => {
  event.preventDefault();
  attempt(async () => {
    const body = {};
    if ($("resource-name").value.trim()) body.name = $("resource-name").value.trim();
    await api(`/resources/${$("resource-type").value}/create`, { method: "POST", body });
    $("resource-create").reset();
    await showResources();
  });
});

// -- the account: balance, limits, usage per day -----------------------------------------------

const ACCOUNT_ROWS = [
  ["Drive bytes", "drive:bytes", formatBytes],
  ["Servers", "servers", String],
  ["CPU of active servers (MHz)", "cpu", String],
  ["Memory of active servers (MB)", "mem", String],
  ["IP addresses", "ips", String],
  ["VLANs", "vlans", String],
];

let usageDays = [];

function usageValue(day, metric) {
  return metric === "charge" ? Number(day.charge) : Number(day[metric]);
}

// A bar per day, drawn as SVG (no library): its figures are in the table below it too.
function drawUsage() {
  const metric = $("usage-metric").value;
  const width = 720;
  const height = 200;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height + 20}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-labelledby", "usage-title");
  const top = Math.max(...usageDays.map((day) => usageValue(day, metric)), 0) || 1;
  const step = width / Math.max(usageDays.length, 1);
  usageDays.forEach((day, index) => {
    const value = usageValue(day, metric);
    const bar = document.createElementNS(ns, "rect");
    const barHeight = Math.round((value / top) * height);
    bar.setAttribute("x", String(index * step + 2));
    bar.setAttribute("y", String(height - barHeight));
    bar.setAttribute("width", String(Math.max(step - 4, 1)));
    bar.setAttribute("height", String(barHeight));
    bar.setAttribute("fill", "#0b4f9c");
    const title = document.createElementNS(ns, "title");
    title.textContent = `${day.day}: ${metric === "drive:bytes" ? formatBytes(value) : value}`;
    bar.append(title);
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", String(index * step + step / 2));
    label.setAttribute("y", String(height + 15));
    label.setAttribute("text-anchor", "middle");
    label.setAttribute("font-size", "11");
    label.textContent = day.day.slice(5);
    svg.append(bar, label);
  });
  $("usage-chart").replaceChildren(svg);
}

async function showAccount() {
  const [account, days] = await Promise.all([api("/account/info"), api("/account/usage?days=30")]);
  const rows = [
    el("tr", {}, el("th", { scope: "row" }, "Balance"), el("td", {}, account.balance), el("td")),
  ];
  for (const [label, key, format] of ACCOUNT_ROWS) {
    const limit = account[`limit:${key}`];
    rows.push(
      el(
        "tr",
        { "data-key": key },
        el("th", { scope: "row" }, label),
        el("td", {}, format(account[`usage:${key}`] ?? 0)),
        el("td", {}, limit === undefined ? "no limit" : format(limit)),
      ),
    );
  }
  document.querySelector("#account tbody").replaceChildren(...rows);
  usageDays = days;
  document.querySelector("#usage tbody").replaceChildren(
    ...days.map((day) =>
      el(
        "tr",
        {},
        el("th", { scope: "row" }, day.day),
        el("td", {}, day.charge),
        el("td", {}, String(day.cpu)),
        el("td", {}, String(day.mem)),
        el("td", {}, formatBytes(day["drive:bytes"])),
      ),
    ),
  );
  $("usage-empty").hidden = days.length > 0;
  drawUsage();
}

sections.account = showAccount;
$("usage-metric").addEventListener("change", drawUsage);
