// Sovereign Gateway web chat. Vanilla JS, no dependencies; the frame protocol is described in
// plugins/webchat/convert.py. All text reaches the page through textContent, never innerHTML.
(function () {
  "use strict";

  var root = document.getElementById("chat");
  var log = document.getElementById("chat-log");
  var form = document.getElementById("chat-form");
  var input = document.getElementById("chat-input");
  var statusLine = document.getElementById("chat-status");
  var maxChars = Number(root.dataset.maxChars) || 4000;
  var storePrefix = "sovereign-webchat:" + root.dataset.channel + ":";
  var VISITOR_RE = /^[0-9a-f]{32,128}$/;

  // localStorage can be missing or throw (private windows, blocked storage): fall back to memory,
  // which keeps the conversation until the tab closes.
  var memory = {};
  function load(key) {
    try { return window.localStorage.getItem(storePrefix + key); } catch (e) { return memory[key] || null; }
  }
  function save(key, value) {
    try { window.localStorage.setItem(storePrefix + key, value); } catch (e) { memory[key] = value; }
  }

  function randomHex(bytes) {
    var data = new Uint8Array(bytes);
    window.crypto.getRandomValues(data);
    return Array.prototype.map.call(data, function (b) { return (b < 16 ? "0" : "") + b.toString(16); }).join("");
  }

  // crypto.randomUUID exists only in secure contexts; a LAN address over http is not one.
  function uuid4() {
    var data = new Uint8Array(16);
    window.crypto.getRandomValues(data);
    data[6] = (data[6] & 0x0f) | 0x40;
    data[8] = (data[8] & 0x3f) | 0x80;
    var h = Array.prototype.map.call(data, function (b) { return (b < 16 ? "0" : "") + b.toString(16); }).join("");
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }

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

  function setStatus(text) { statusLine.textContent = text; }

  function scrollDown() { log.scrollTop = log.scrollHeight; }

  function bubble(direction, text, note) {
    var item = document.createElement("li");
    item.className = "msg " + (direction === "in" ? "msg-in" : "msg-out");
    var label = document.createElement("span");
    label.className = "visually-hidden";
    label.textContent = direction === "in" ? "You: " : "Reply: ";
    var body = document.createElement("p");
    body.className = "msg-text";
    body.textContent = text;
    item.appendChild(label);
    item.appendChild(body);
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
      note = document.createElement("span");
      note.className = "msg-note";
      item.appendChild(note);
    }
    note.textContent = text;
    item.classList.toggle("msg-sending", kind === "sending");
    item.classList.toggle("msg-failed", kind === "failed");
  }

  function showPending(message) {
    bubbles[message.client_id] = bubble("in", message.text, "Sending…");
  }

  // -- the connection ------------------------------------------------------------------------

  var socket = null;
  var ready = false; // hello answered with the history
  var backoff = 500;
  var pingTimer = null;

  function socketUrl() {
    var url = new URL("ws", window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url.href;
  }

  function sendFrame(frame) {
    if (socket && socket.readyState === WebSocket.OPEN) { socket.send(JSON.stringify(frame)); return true; }
    return false;
  }

  function transmit(message) {
    if (ready) { sendFrame({ type: "message", client_id: message.client_id, text: message.text }); }
  }

  function connect() {
    setStatus(socket ? "Reconnecting…" : "Connecting…");
    ready = false;
    try {
      socket = new WebSocket(socketUrl());
    } catch (e) {
      scheduleReconnect();
      return;
    }
    socket.addEventListener("open", function () {
      sendFrame({ type: "hello", visitor: visitor });
      // Keeps proxies from closing an idle socket.
      pingTimer = window.setInterval(function () { sendFrame({ type: "ping" }); }, 25000);
    });
    socket.addEventListener("message", function (event) {
      var frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      handle(frame);
    });
    socket.addEventListener("close", function () {
      window.clearInterval(pingTimer);
      ready = false;
      scheduleReconnect();
    });
  }

  function scheduleReconnect() {
    setStatus("Connection lost. Reconnecting…");
    var wait = backoff * (0.75 + Math.random() * 0.5);
    backoff = Math.min(backoff * 2, 30000);
    window.setTimeout(connect, wait);
  }

  function handle(frame) {
    if (frame.type === "history") {
      showHistory(frame.messages || []);
      ready = true;
      backoff = 500;
      setStatus("");
      pending.forEach(transmit);
    } else if (frame.type === "ack") {
      acknowledged(frame.client_id);
    } else if (frame.type === "reply") {
      if (!seenReplies[frame.id]) {
        bubble("out", frame.text);
      }
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
      window.setTimeout(function () { if (findPending(message.client_id) >= 0) { transmit(message); } }, wait);
      return;
    }
    pending.splice(i, 1);
    savePending();
    if (bubbles[clientId]) { setNote(bubbles[clientId], "Not sent: " + (frame.reason || "refused"), "failed"); }
  }

  // -- the form ------------------------------------------------------------------------------

  function submit() {
    var text = input.value;
    if (!text.trim()) { return; }
    if (text.length > maxChars) {
      setStatus("Your message is longer than " + maxChars + " characters.");
      return;
    }
    var message = { client_id: uuid4(), text: text };
    pending.push(message);
    savePending();
    showPending(message);
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

  resize();
  pending.forEach(showPending);
  connect();
})();
