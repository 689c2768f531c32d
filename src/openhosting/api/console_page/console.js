// The web console: noVNC's RFB client on the daemon's WebSocket, opened with the one-use
// token in this page's address. Every state is said in words in #status; never a blank page.
//
// The daemon logs in to the server's VNC itself and offers this page RFB without
// authentication: no password is ever asked here, nor sent to the browser.

const statusLine = document.getElementById("status");
const screen = document.getElementById("screen");

function show(text, state) {
  statusLine.textContent = text;
  statusLine.dataset.state = state; // loading, connecting, connected, ended, error
  document.title = `${text} – Open Hosting`;
}

const AGAIN = "Ask for a new console (the dashboard's Console button, or POST /servers/S/console).";

// Where the WebSocket is, beside this page; wss when the page came over HTTPS.
function websocketUrl(token) {
  const url = new URL("websocket", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.search = new URLSearchParams({ token }).toString();
  url.hash = "";
  return url.toString();
}

// A refused WebSocket tells a page nothing of why. A plain GET of the same address asks the
// daemon without using a token up: it answers why the token cannot be used. It carries the
// dashboard's session cookie as the WebSocket did: a dashboard's token is bound to it.
async function whyRefused(token) {
  const url = new URL("websocket", location.href);
  url.search = new URLSearchParams({ token }).toString();
  try {
    const response = await fetch(url, { cache: "no-store", credentials: "same-origin" });
    if (response.status === 400) {
      return `the daemon refused the connection (this page's origin or the network). ${AGAIN}`;
    }
    return (await response.text()).trim() || `HTTP ${response.status}`;
  } catch (error) {
    return `the daemon could not be reached (${error.message})`;
  }
}

async function main() {
  const token = new URLSearchParams(location.search).get("token");
  if (!token) {
    show(`This address holds no console token. ${AGAIN}`, "error");
    return;
  }
  // The token works once: keep it out of the history and of a reload.
  history.replaceState(null, "", location.pathname);

  let RFB;
  try {
    ({ default: RFB } = await import("./novnc/core/rfb.js"));
  } catch (error) {
    show(`noVNC could not be loaded from the daemon (${error.message}): ` +
         "the operator installs Debian's novnc package (api.console_novnc_dir).", "error");
    return;
  }

  show("Connecting to the server's console…", "connecting");
  let connected = false;
  let rfb;
  try {
    rfb = new RFB(screen, websocketUrl(token), { wsProtocols: ["binary"] });
  } catch (error) {
    show(`The console could not be opened: ${error.message}. ${AGAIN}`, "error");
    return;
  }
  rfb.scaleViewport = true; // the whole screen, scaled to the window
  rfb.resizeSession = false;
  rfb.focusOnClick = true;

  rfb.addEventListener("connect", () => {
    connected = true;
    show("Connected: click the screen to type.", "connected");
    rfb.focus();
  });
  rfb.addEventListener("desktopname", (event) => {
    if (connected) document.title = `${event.detail.name} – Open Hosting console`;
  });
  rfb.addEventListener("credentialsrequired", () => {
    show("The server's VNC asked for a password, which this console never types.", "error");
    rfb.disconnect();
  });
  rfb.addEventListener("securityfailure", (event) => {
    show(`The server's VNC refused the console: ${event.detail.reason || event.detail.status}.`,
         "error");
  });
  rfb.addEventListener("disconnect", async (event) => {
    if (statusLine.dataset.state === "error") return; // already said why
    if (connected && event.detail.clean) {
      show("The console session ended: the server stopped, or its console was closed. " +
           AGAIN, "ended");
    } else if (connected) {
      show(`The connection to the console was lost. ${AGAIN}`, "ended");
    } else {
      show(`The console could not be opened: ${await whyRefused(token)}.`, "error");
    }
  });
}

main().catch((error) => show(`The console failed: ${error.message}`, "error"));
