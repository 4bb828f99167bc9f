// Sovereign Gateway chat widget. Paste on any allowed site:
//   <script src="https://GATEWAY/chat/NAME/widget.js" data-channel="NAME" async></script>
// Optional: data-language="ru", data-transport="websocket" | "sse" (forces one carrier),
// data-mode="page" (the full-page chat the gateway serves at /chat/NAME/).
// Vanilla JS, no dependencies, no build step; styles live in a Shadow DOM. All text reaches the
// page through textContent, never innerHTML. The frame protocol: plugins/webchat/convert.py.
(function () {
  "use strict";

  var CSS = "__SOVEREIGN_CHAT_CSS__";
  // currentScript is null only where a loader runs us oddly: then find our tag.
  var script = document.currentScript || document.querySelector('script[data-channel][src$="/widget.js"]');
  if (!script || !script.src) { return; }
  var base = new URL(".", script.src); // https://GATEWAY/chat/NAME/
  var registry = (window.__sovereignChat = window.__sovereignChat || {});
  if (registry[base.href]) { return; } // pasted twice: one chat
  registry[base.href] = true;

  var mode = script.getAttribute("data-mode") === "page" ? "page" : "widget";
  var channel = script.getAttribute("data-channel") || decodeURIComponent(base.pathname.split("/").slice(-2)[0]);
  var forced = script.getAttribute("data-transport");
  var askedLanguage = script.getAttribute("data-language");
  var VISITOR_RE = /^[0-9a-f]{32,128}$/;
  var storePrefix = "sovereign-chat:" + base.origin + "/" + channel + ":";
  var gpc = navigator.globalPrivacyControl === true;

  function warn(text) {
    if (window.console) { window.console.warn("Sovereign Gateway chat " + JSON.stringify(channel) + ": " + text); }
  }

  function endpoint(path) { return new URL(path, base).href; }

  // localStorage can be missing or throw (private windows, blocked storage): fall back to memory,
  // which keeps the conversation until the tab closes.
  var memory = {};
  function load(key, session) {
    try { return (session ? window.sessionStorage : window.localStorage).getItem(storePrefix + key); } catch (e) { return memory[key] || null; }
  }
  function save(key, value, session) {
    try { (session ? window.sessionStorage : window.localStorage).setItem(storePrefix + key, value); } catch (e) { memory[key] = value; }
  }

  function hex(data) {
    return Array.prototype.map.call(data, function (b) { return (b < 16 ? "0" : "") + b.toString(16); }).join("");
  }
  function randomHex(bytes) {
    var data = new Uint8Array(bytes);
    window.crypto.getRandomValues(data);
    return hex(data);
  }
  // crypto.randomUUID exists only in secure contexts; a LAN address over http is not one.
  function uuid4() {
    var data = new Uint8Array(16);
    window.crypto.getRandomValues(data);
    data[6] = (data[6] & 0x0f) | 0x40;
    data[8] = (data[8] & 0x3f) | 0x80;
    var h = hex(data);
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }

  fetch(endpoint("config"), { credentials: "omit", cache: "no-cache", referrerPolicy: "no-referrer" })
    .then(function (response) {
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.json();
    })
    .then(function (settings) {
      if (document.body) { start(settings); } else { document.addEventListener("DOMContentLoaded", function () { start(settings); }); }
    }, function (error) {
      warn("not started: this site's origin (" + window.location.origin + ") may be missing from allowed_origins " +
        "of [channels." + channel + "], or the gateway is unreachable (" + error.message + ")");
    });

  function pickLanguage(settings) {
    var wanted = [];
    if (askedLanguage) { wanted.push(askedLanguage); }
    if (settings.language && settings.language !== "auto") {
      wanted.push(settings.language);
    } else {
      wanted.push(document.documentElement.lang || "");
      Array.prototype.push.apply(wanted, navigator.languages || [navigator.language || ""]);
    }
    for (var i = 0; i < wanted.length; i++) {
      var code = String(wanted[i] || "").toLowerCase();
      if (settings.strings[code]) { return code; }
      if (settings.strings[code.split("-")[0]]) { return code.split("-")[0]; }
    }
    return "en";
  }

  function start(settings) {
    var language = pickLanguage(settings);
    var words = settings.strings[language] || settings.strings.en;
    function t(key) { return words[key] || settings.strings.en[key] || key; }
    var maxChars = Number(settings.max_message_chars) || 4000;
    var allowWs = forced !== "sse" && settings.transport !== "sse";
    var allowSse = forced !== "websocket" && settings.transport !== "websocket";

    // -- the DOM --------------------------------------------------------------------------------

    function el(tag, className, text) {
      var node = document.createElement(tag);
      if (className) { node.className = className; }
      if (text) { node.textContent = text; }
      return node;
    }

    var host = document.createElement("sovereign-chat");
    // Inline !important beats any stylesheet of the host page, so its CSS cannot hide or move us.
    var hostStyle = mode === "page"
      ? { all: "initial", display: "block", position: "static", width: "100%", height: "100%" }
      : { all: "initial", display: "block", position: "fixed", bottom: "0", right: "0", width: "0", height: "0",
          "z-index": "2147483000", visibility: "visible", opacity: "1", transform: "none" };
    Object.keys(hostStyle).forEach(function (key) { host.style.setProperty(key, hostStyle[key], "important"); });
    host.style.setProperty("--sg-accent", settings.accent_color);
    host.style.setProperty("--sg-accent-text", settings.accent_text_color);
    host.setAttribute("lang", language);
    var shadow = host.attachShadow({ mode: "open" });
    if (window.CSSStyleSheet && "adoptedStyleSheets" in shadow) {
      // A constructed stylesheet: not subject to the host page's CSP style-src.
      var sheet = new CSSStyleSheet();
      sheet.replaceSync(CSS);
      shadow.adoptedStyleSheets = [sheet];
    } else {
      shadow.appendChild(el("style", "", CSS));
    }

    var root = el("div", "sg sg-" + mode + (settings.position === "left" ? " sg-left" : ""));
    var launcher = el("button", "sg-launcher");
    launcher.type = "button";
    launcher.setAttribute("aria-label", t("open"));
    launcher.setAttribute("aria-expanded", "false");
    var svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    var path = document.createElementNS("http://www.w3.org/2000/svg", "path");
    path.setAttribute("d", "M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2z");
    svg.appendChild(path);
    launcher.appendChild(svg);

    var box = el("section", "sg-box");
    box.setAttribute("role", mode === "page" ? "main" : "dialog");
    box.setAttribute("aria-label", t("title"));
    var header = el("header", "sg-header");
    header.appendChild(el(mode === "page" ? "h1" : "h2", "sg-title", t("title")));
    var closer = el("button", "sg-close", "×");
    closer.type = "button";
    closer.setAttribute("aria-label", t("close"));
    if (mode !== "page") { header.appendChild(closer); }

    // The notice at collection: shown before anything is typed, and kept in view.
    var notice = el("p", "sg-notice", t("notice") + " " + (settings.ai_disclosure ? t("ai_notice") + " " : ""));
    if (settings.privacy_notice_url) {
      var link = new URL(settings.privacy_notice_url, base);
      if (link.protocol === "https:" || link.protocol === "http:") {
        var anchor = el("a", "sg-privacy", t("privacy"));
        anchor.href = link.href;
        anchor.target = "_blank";
        anchor.rel = "noopener noreferrer";
        notice.appendChild(anchor);
      }
    }
    var log = el("ol", "sg-log");
    log.setAttribute("role", "log");
    log.setAttribute("aria-live", "polite");
    var welcome = el("li", "msg msg-out msg-welcome");
    welcome.appendChild(el("p", "msg-text", t("welcome")));
    log.appendChild(welcome);

    var footer = el("footer", "sg-footer");
    var statusLine = el("p", "sg-status");
    statusLine.setAttribute("role", "status");
    statusLine.setAttribute("aria-live", "polite");
    var form = el("form", "sg-form");
    form.setAttribute("autocomplete", "off");
    var inputId = "sg-input";
    var label = el("label", "vh", t("label"));
    label.htmlFor = inputId;
    var input = el("textarea", "sg-input");
    input.id = inputId;
    input.rows = 1;
    input.maxLength = maxChars;
    input.placeholder = t("placeholder");
    var sendButton = el("button", "sg-send", t("send"));
    sendButton.type = "submit";
    form.appendChild(label);
    form.appendChild(input);
    form.appendChild(sendButton);
    footer.appendChild(statusLine);
    footer.appendChild(form);
    footer.appendChild(el("p", "sg-hint", t("hint")));

    box.appendChild(header);
    box.appendChild(notice);
    box.appendChild(log);
    box.appendChild(footer);
    if (mode !== "page") { root.appendChild(launcher); }
    root.appendChild(box);
    shadow.appendChild(root);
    document.body.appendChild(host);

    function setStatus(text) { statusLine.textContent = text; }
    function scrollDown() { log.scrollTop = log.scrollHeight; }

    // -- the conversation -----------------------------------------------------------------------

    var visitor = load("visitor");
    if (!visitor || !VISITOR_RE.test(visitor)) {
      visitor = randomHex(16); // 128 random bits: the visitor's only key to this conversation
      save("visitor", visitor);
    }

    // Messages typed but not yet acknowledged, oldest first: {client_id, text}. Kept across
    // reloads so nothing typed is lost; resent with the same client_id, which the server dedupes.
    var pending = [];
    try { pending = JSON.parse(load("pending") || "[]").filter(function (m) { return m && m.client_id && m.text; }); } catch (e) { pending = []; }
    function savePending() { save("pending", JSON.stringify(pending)); }
    function findPending(clientId) {
      for (var i = 0; i < pending.length; i++) { if (pending[i].client_id === clientId) { return i; } }
      return -1;
    }

    var seenReplies = {};
    var bubbles = {}; // client_id -> <li> of the visitor's own messages shown

    function bubble(direction, text, note) {
      var item = el("li", "msg " + (direction === "in" ? "msg-in" : "msg-out"));
      item.appendChild(el("span", "vh", (direction === "in" ? t("you") : t("reply")) + " "));
      item.appendChild(el("p", "msg-text", text));
      if (note) { setNote(item, note, "sending"); }
      log.appendChild(item);
      scrollDown();
      return item;
    }

    function setNote(item, text, kind) {
      var note = item.querySelector(".msg-note");
      if (!text) {
        if (note) { note.remove(); }
        item.classList.remove("msg-sending", "msg-failed");
        return;
      }
      if (!note) {
        note = el("span", "msg-note");
        item.appendChild(note);
      }
      note.textContent = text;
      item.classList.toggle("msg-sending", kind === "sending");
      item.classList.toggle("msg-failed", kind === "failed");
    }

    function showPending(message) { bubbles[message.client_id] = bubble("in", message.text, t("sending")); }

    // -- carriers: a websocket, or server-sent events + POST where websockets are blocked --------

    var transport = null; // {kind, send(frame), close()}
    var ready = false; // the history has arrived
    var started = false;
    var everReady = false;
    var wsEverOpened = false;
    var useSse = !allowWs;
    var backoff = 500;
    var retryTimer = null;

    function setState(state) {
      host.setAttribute("data-state", state);
      host.setAttribute("data-transport", useSse ? "sse" : "websocket");
    }

    function connect() {
      retryTimer = null;
      ready = false;
      setStatus(everReady ? t("reconnecting") : t("connecting"));
      setState("connecting");
      if (useSse) { openStream(); } else { openSocket(); }
    }

    function lost(which) {
      if (transport !== which) { return; }
      transport = null;
      ready = false;
      setStatus(t("reconnecting"));
      setState("connecting");
      var wait = backoff * (0.75 + Math.random() * 0.5);
      backoff = Math.min(backoff * 2, 30000);
      window.clearTimeout(retryTimer);
      retryTimer = window.setTimeout(connect, wait);
    }

    function openSocket() {
      var url = new URL("ws", base);
      url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
      var socket = null;
      var opened = false;
      var pinger = null;
      var openTimer = null;
      var finished = false;
      var current = {
        kind: "websocket",
        send: function (frame) { if (socket && socket.readyState === WebSocket.OPEN) { socket.send(JSON.stringify(frame)); } },
        close: function () { if (socket) { socket.close(); } }
      };
      transport = current;

      function closed() {
        if (finished) { return; }
        finished = true;
        window.clearTimeout(openTimer);
        window.clearInterval(pinger);
        if (transport !== current) { return; }
        if (!opened && !wsEverOpened && allowSse) {
          // Never opened on this page (a proxy, a firewall or the site's CSP blocks
          // websockets): fall back to server-sent events at once.
          warn("websocket unavailable; using server-sent events");
          useSse = true;
          transport = null;
          connect();
          return;
        }
        lost(current);
      }

      try { socket = new WebSocket(url.href); } catch (e) { closed(); return; }
      // A proxy that swallows the upgrade leaves the socket connecting for ever.
      openTimer = window.setTimeout(function () { if (!opened) { socket.close(); } }, 8000);
      socket.addEventListener("open", function () {
        opened = wsEverOpened = true;
        window.clearTimeout(openTimer);
        current.send({ type: "hello", visitor: visitor, gpc: gpc });
        pinger = window.setInterval(function () { current.send({ type: "ping" }); }, 25000); // keeps proxies from closing it
      });
      socket.addEventListener("message", function (event) {
        var frame;
        try { frame = JSON.parse(event.data); } catch (e) { return; }
        handle(frame);
      });
      socket.addEventListener("close", closed);
      // Chromium fires only "error" (no "close") for a socket the page's CSP blocks.
      socket.addEventListener("error", function () { if (socket.readyState === WebSocket.CLOSED) { closed(); } });
    }

    function openStream() {
      var aborter = window.AbortController ? new AbortController() : null;
      var current = {
        kind: "sse",
        send: function () {},
        close: function () { if (aborter) { aborter.abort(); } }
      };
      transport = current;
      fetch(endpoint("events"), {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ visitor: visitor, gpc: gpc }),
        credentials: "omit",
        cache: "no-store",
        referrerPolicy: "no-referrer",
        signal: aborter ? aborter.signal : undefined
      }).then(function (response) {
        if (!response.ok || !response.body) {
          return response.json().then(function (frame) { handle(frame); }, function () {}).then(function () {
            throw new Error("HTTP " + response.status);
          });
        }
        var reader = response.body.getReader();
        var decoder = new TextDecoder();
        var buffer = "";
        function pump() {
          return reader.read().then(function (chunk) {
            if (chunk.done) { throw new Error("the stream ended"); }
            buffer += decoder.decode(chunk.value, { stream: true });
            var events = buffer.split("\n\n");
            buffer = events.pop();
            events.forEach(function (event) {
              var data = event.split("\n").filter(function (line) { return line.indexOf("data:") === 0; })
                .map(function (line) { return line.slice(5).replace(/^ /, ""); }).join("\n");
              if (!data) { return; } // a keep-alive comment
              var frame;
              try { frame = JSON.parse(data); } catch (e) { return; }
              if (transport === current) { handle(frame); }
            });
            return pump();
          });
        }
        return pump();
      }).catch(function () { lost(current); });
    }

    var posting = {}; // client_id -> true while its POST is out

    function post(message) {
      if (posting[message.client_id]) { return; }
      posting[message.client_id] = true;
      fetch(endpoint("send"), {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ visitor: visitor, client_id: message.client_id, text: message.text, gpc: gpc }),
        credentials: "omit",
        cache: "no-store",
        referrerPolicy: "no-referrer"
      }).then(function (response) {
        return response.json();
      }).then(function (frame) {
        delete posting[message.client_id];
        handle(frame);
      }, function () {
        // No answer (network, or not JSON): the message stays pending and goes again.
        delete posting[message.client_id];
        message.tries = (message.tries || 0) + 1;
        window.setTimeout(function () { transmit(message); }, Math.min(30000, 1000 * Math.pow(2, message.tries)));
      });
    }

    function transmit(message) {
      if (!ready || findPending(message.client_id) < 0) { return; }
      if (transport && transport.kind === "websocket") {
        transport.send({ type: "message", client_id: message.client_id, text: message.text });
      } else if (transport) {
        post(message);
      }
    }

    function handle(frame) {
      if (frame.type === "history") {
        showHistory(frame.messages || []);
        ready = everReady = true;
        backoff = 500;
        setStatus("");
        setState("ready");
        pending.forEach(transmit);
      } else if (frame.type === "ack") {
        acknowledged(frame.client_id);
      } else if (frame.type === "reply") {
        if (!seenReplies[frame.id]) { bubble("out", frame.text); }
        seenReplies[frame.id] = true;
      } else if (frame.type === "error") {
        refused(frame);
      }
    }

    function showHistory(messages) {
      // Rebuild from the server's record: it is the truth after any reconnect.
      while (log.children.length > 1) { log.removeChild(log.lastChild); } // keep the welcome
      seenReplies = {};
      bubbles = {};
      messages.forEach(function (m) {
        if (m.direction === "in") {
          if (m.client_id) {
            var i = findPending(m.client_id);
            if (i >= 0) { pending.splice(i, 1); } // stored, only its ack was lost
            bubbles[m.client_id] = bubble("in", m.text);
          } else {
            bubble("in", m.text);
          }
        } else {
          seenReplies[m.id] = true;
          bubble("out", m.text);
        }
      });
      savePending();
      pending.forEach(showPending);
    }

    function acknowledged(clientId) {
      var i = findPending(clientId);
      if (i >= 0) { pending.splice(i, 1); savePending(); }
      if (bubbles[clientId]) { setNote(bubbles[clientId], null); }
    }

    function refused(frame) {
      var clientId = frame.client_id;
      if (frame.code === "bad_visitor") {
        visitor = randomHex(16);
        save("visitor", visitor);
        return;
      }
      if (!clientId) {
        if (frame.reason) { setStatus(frame.reason); }
        return;
      }
      var i = findPending(clientId);
      if (i < 0) { return; }
      if (frame.retry) {
        var message = pending[i];
        var wait = Math.max(1000, (frame.retry_after || 0) * 1000);
        window.setTimeout(function () { transmit(message); }, wait);
        return;
      }
      pending.splice(i, 1);
      savePending();
      if (bubbles[clientId]) { setNote(bubbles[clientId], t("not_sent") + " " + (frame.reason || ""), "failed"); }
    }

    function ensureStarted() {
      if (!started) { started = true; connect(); }
    }

    // -- opening, typing, sending ---------------------------------------------------------------

    function setOpen(open) {
      box.hidden = !open;
      launcher.setAttribute("aria-expanded", open ? "true" : "false");
      save("open", open ? "1" : "", true);
      if (open) {
        ensureStarted();
        resize();
        input.focus();
      }
    }

    function submit() {
      var text = input.value;
      if (!text.trim()) { return; }
      if (text.length > maxChars) {
        setStatus(t("too_long").replace("{max}", String(maxChars)));
        return;
      }
      var message = { client_id: uuid4(), text: text };
      pending.push(message);
      savePending();
      showPending(message);
      ensureStarted();
      transmit(message);
      input.value = "";
      resize();
      input.focus();
    }

    function resize() {
      input.style.height = "auto";
      input.style.height = Math.min(input.scrollHeight + 2, 160) + "px";
      input.style.overflowY = input.scrollHeight + 2 > 160 ? "auto" : "hidden";
    }

    form.addEventListener("submit", function (event) { event.preventDefault(); submit(); });
    input.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        submit();
      }
    });
    input.addEventListener("input", resize);
    launcher.addEventListener("click", function () { setOpen(box.hidden); });
    closer.addEventListener("click", function () { setOpen(false); launcher.focus(); });

    pending.forEach(showPending);
    setState("idle");
    if (mode === "page") {
      document.title = t("title");
      document.body.style.margin = "0"; // our own page: the box fills the window
      ensureStarted();
      resize();
    } else {
      box.hidden = true;
      if (load("open", true) === "1" || pending.length) { setOpen(true); }
    }
  }
})();
