// The chat's web client: a guest picks a name, joins rooms, talks, sees who is there and who is
// typing, and sends direct messages by clicking a person. It speaks the worker's documented
// Socket.IO events with the socket.io-client bundle the worker serves, keeps its session token
// (so a reconnect, after a `chatctl reload` say, comes back as the same guest in the same rooms)
// and the last message seen per room (so what was missed comes back too).
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  socket: null,
  me: null,
  current: null, // a room name, or "@dm:GUEST_ID"
  rooms: new Map(), // name -> { messages: [], members: Map(id -> guest), count, last }
  typingTimer: null,
  typists: new Map(), // room -> Map(guest id -> name)
};
window.chat = state; // for tests and the curious

function conversation(name) {
  if (!state.rooms.has(name)) state.rooms.set(name, { messages: [], members: new Map(), count: 0, last: null });
  return state.rooms.get(name);
}

// The auth of each (re)connection: the saved session and the last message seen per room, so a
// reconnect comes back as the same guest, in its rooms, with what it missed.
function auth(cb) {
  const saved = JSON.parse(localStorage.getItem("chat.session") || "null");
  const since = {};
  for (const [name, room] of state.rooms) if (room.last && !name.startsWith("@")) since[name] = room.last;
  cb(saved ? { token: saved.token, since } : {});
}

function connect() {
  const socket = io({ auth, transports: ["websocket", "polling"] });
  state.socket = socket;
  socket.on("connect", () => {
    $("banner").hidden = true;
    document.body.dataset.connected = "yes";
  });
  socket.on("disconnect", () => {
    $("banner").hidden = false;
    document.body.dataset.connected = "no";
    document.body.dataset.sawReconnecting = "yes";
  });
  socket.on("connect_error", (e) => {
    if (!state.me) $("welcome-error").textContent = e.message;
  });
  socket.on("session", ({ token, guest }) => {
    localStorage.setItem("chat.session", JSON.stringify({ token, guest }));
    if (!state.me || state.me.id !== guest.id) entered(guest);
  });
  socket.on("session:error", () => localStorage.removeItem("chat.session"));
  socket.on("message", (m) => received(m.room, m));
  socket.on("history", ({ room, messages }) => messages.forEach((m) => received(room, m)));
  socket.on("dm", (m) => {
    const other = m.from.id === state.me?.id ? m.to : m.from.id;
    const dm = conversation(`@dm:${other}`);
    if (m.from.id !== state.me?.id) dm.title = m.from.name;
    received(`@dm:${other}`, { ...m, room: `@dm:${other}` });
    renderRooms();
  });
  socket.on("room:presence", ({ room, guest, joined, count }) => {
    const r = conversation(room);
    r.count = count;
    if (joined) r.members.set(guest.id, guest);
    else r.members.delete(guest.id);
    if (guest.id !== state.me?.id) notice(room, `${guest.name} ${joined ? "joined" : "left"}`);
    renderRooms();
    renderMembers();
  });
  socket.on("room:members", ({ room, members }) => {
    const r = conversation(room);
    r.members = new Map(members.map((g) => [g.id, g]));
    r.count = members.length;
    renderMembers();
    renderRooms();
  });
  socket.on("typing", ({ room, guest, typing }) => {
    const typists = state.typists.get(room) || new Map();
    if (typing) typists.set(guest.id, guest.name);
    else typists.delete(guest.id);
    state.typists.set(room, typists);
    renderTyping();
  });
  socket.on("stats", (stats) => {
    document.body.dataset.instance = stats.instance ?? "";
    $("where").textContent = stats.instance != null ? `instance ${stats.instance} · ${stats.users} online` : "";
  });
  socket.on("chat:error", ({ error, limit }) => notice(state.current, `${error}${limit ? ` (${limit})` : ""}`));
  return socket;
}

function entered(guest) {
  state.me = guest;
  $("welcome").hidden = true;
  $("app").hidden = false;
  $("me").textContent = guest.name;
  $("text").disabled = !state.current;
  document.querySelector("#say button").disabled = !state.current;
  // A returning visitor is put back into its rooms before it learns who it is: show the first.
  const first = [...state.rooms.keys()].find((name) => !name.startsWith("@"));
  if (!state.current && first) show(first);
}

async function ask(event, data) {
  return state.socket.timeout(10000).emitWithAck(event, data).catch((e) => ({ ok: false, error: String(e) }));
}

async function join(room) {
  const since = conversation(room).last;
  const reply = await ask("room:join", since ? { room, since } : { room });
  if (!reply.ok) return notice(state.current, reply.error);
  const r = conversation(room);
  r.members = new Map((reply.members || []).map((g) => [g.id, g]));
  r.count = r.members.size;
  (reply.missed || []).forEach((m) => received(room, m));
  show(room);
}

function received(room, m) {
  const r = conversation(room);
  if (r.messages.some((x) => x.id === m.id)) return;
  r.messages.push(m);
  if (!room.startsWith("@")) r.last = m.id;
  if (room === state.current) renderMessages();
  else r.unread = (r.unread || 0) + 1;
  renderRooms();
}

function notice(room, text) {
  if (!room) return;
  conversation(room).messages.push({ notice: text });
  if (room === state.current) renderMessages();
}

function show(room) {
  state.current = room;
  conversation(room).unread = 0;
  const dm = room.startsWith("@dm:");
  $("title").textContent = dm ? `Direct: ${conversation(room).title || "guest"}` : `# ${room}`;
  $("leave").hidden = dm;
  $("text").disabled = false;
  document.querySelector("#say button").disabled = false;
  $("app").classList.remove("rooms");
  renderRooms();
  renderMembers();
  renderMessages();
  renderTyping();
  $("text").focus();
}

function renderRooms() {
  const list = $("rooms");
  list.replaceChildren();
  for (const [name, r] of state.rooms) {
    const li = document.createElement("li");
    li.className = name === state.current ? "current" : "";
    li.dataset.room = name;
    const label = document.createElement("span");
    label.textContent = name.startsWith("@dm:") ? `@ ${r.title || "guest"}` : `# ${name}`;
    const count = document.createElement("span");
    count.className = "count";
    count.textContent = r.unread ? `${r.unread} new` : name.startsWith("@") ? "" : String(r.count || "");
    li.append(label, count);
    li.onclick = () => show(name);
    list.append(li);
  }
}

function renderMembers() {
  const list = $("members");
  list.replaceChildren();
  const r = state.current && !state.current.startsWith("@") ? conversation(state.current) : null;
  for (const guest of r ? r.members.values() : []) {
    const li = document.createElement("li");
    li.textContent = guest.id === state.me?.id ? `${guest.name} (you)` : guest.name;
    if (guest.id !== state.me?.id) {
      li.title = `Message ${guest.name}`;
      li.onclick = () => {
        const name = `@dm:${guest.id}`;
        conversation(name).title = guest.name;
        show(name);
      };
    }
    list.append(li);
  }
}

function renderMessages() {
  const list = $("messages");
  list.replaceChildren();
  for (const m of conversation(state.current).messages) {
    const li = document.createElement("li");
    if (m.notice) {
      li.className = "notice";
      li.textContent = m.notice;
    } else {
      li.className = m.from.id === state.me?.id ? "mine" : "";
      const from = document.createElement("span");
      from.className = "from";
      from.textContent = `${m.from.name} · ${new Date(m.time).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}`;
      const text = document.createElement("span");
      text.textContent = m.text;
      li.append(from, text);
      if (m.file) li.append(fileLink(m.file));
    }
    list.append(li);
  }
  list.scrollTop = list.scrollHeight;
}

/// A shared file in a message: a download link, with a picture for images.
function fileLink(file) {
  const a = document.createElement("a");
  a.className = "file";
  a.href = file.url;
  a.download = file.name;
  if (file.type.startsWith("image/")) {
    const img = document.createElement("img");
    img.src = file.url;
    img.alt = file.name;
    a.append(img);
  }
  const label = document.createElement("span");
  const kb = file.size < 1024 * 1024 ? `${Math.ceil(file.size / 1024)} KB` : `${(file.size / 1048576).toFixed(1)} MB`;
  label.textContent = `${file.name} (${kb})`;
  a.append(label);
  return a;
}

/// Uploads `file` with the guest's token, showing its progress, then sends it to the conversation.
function upload(file, room) {
  const saved = JSON.parse(localStorage.getItem("chat.session") || "null");
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/api/files");
  xhr.setRequestHeader("Authorization", `Bearer ${saved ? saved.token : ""}`);
  xhr.setRequestHeader("X-File-Name", encodeURIComponent(file.name));
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) $("typing").textContent = `Uploading ${file.name}: ${Math.round((100 * e.loaded) / e.total)}%`;
  };
  xhr.onerror = () => notice(room, `${file.name}: the upload failed`);
  xhr.onload = async () => {
    $("typing").textContent = "";
    let reply = {};
    try {
      reply = JSON.parse(xhr.responseText);
    } catch {}
    if (xhr.status !== 200) return notice(room, `${file.name}: ${reply.error || `upload failed (${xhr.status})`}`);
    const sent = room.startsWith("@dm:")
      ? await ask("dm", { to: room.slice(4), text: "", file: reply.id })
      : await ask("message", { room, text: "", file: reply.id });
    if (!sent.ok) notice(room, sent.error);
  };
  xhr.send(file);
}

function renderTyping() {
  const names = [...(state.typists.get(state.current) || new Map()).values()];
  $("typing").textContent = names.length ? `${names.join(", ")} ${names.length > 1 ? "are" : "is"} typing…` : "";
}

$("welcome").onsubmit = async (e) => {
  e.preventDefault();
  const name = $("name").value.trim();
  if (!state.socket) connect();
  const reply = await ask("guest:join", { name });
  if (!reply.ok) return ($("welcome-error").textContent = reply.error);
  document.body.dataset.instance = reply.instance ?? "";
  entered(reply.guest);
};

$("join").onsubmit = (e) => {
  e.preventDefault();
  const room = $("room").value.trim();
  if (room) join(room);
  $("room").value = "";
};

$("leave").onclick = async () => {
  const room = state.current;
  await ask("room:leave", { room });
  state.rooms.delete(room);
  state.current = null;
  $("title").textContent = "No room yet";
  $("messages").replaceChildren();
  renderRooms();
  renderMembers();
};

$("back").onclick = () => $("app").classList.add("rooms");

$("file").onchange = () => {
  const file = $("file").files[0];
  $("file").value = "";
  if (file && state.current) upload(file, state.current);
};

$("say").onsubmit = async (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  const room = state.current;
  if (!text || !room) return;
  $("text").value = "";
  clearTimeout(state.typingTimer);
  state.typingTimer = null;
  if (room.startsWith("@dm:")) {
    const reply = await ask("dm", { to: room.slice(4), text });
    if (!reply.ok) notice(room, reply.error);
    return;
  }
  state.socket.emit("typing", { room, typing: false });
  const reply = await ask("message", { room, text });
  if (!reply.ok) notice(room, reply.error);
};

$("text").oninput = () => {
  const room = state.current;
  if (!room || room.startsWith("@")) return;
  if (!state.typingTimer) state.socket.emit("typing", { room, typing: true });
  clearTimeout(state.typingTimer);
  state.typingTimer = setTimeout(() => {
    state.typingTimer = null;
    state.socket.emit("typing", { room, typing: false });
  }, 2000);
};

// A returning visitor goes straight in, as the guest it was.
if (localStorage.getItem("chat.session")) connect();
