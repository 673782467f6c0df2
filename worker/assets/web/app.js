// The chat's web client: a guest picks a name, joins rooms, talks, sees who is there and who is
// typing, and sends direct messages by clicking a person. It speaks the worker's documented
// Socket.IO events with the socket.io-client bundle the worker serves, keeps its session token
// (so a reconnect, after a `chatctl reload` say, comes back as the same guest in the same rooms)
// and the last message seen per room (so what was missed comes back too). In a direct conversation
// a guest can call the other, by voice or video: WebRTC between the two browsers, the worker
// relaying only the signalling (the calls section below).
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
  // In a room of more than 100 members the joins and leaves of a moment come together in `changes`.
  socket.on("room:presence", ({ room, guest, joined, count, changes }) => {
    const r = conversation(room);
    r.count = count;
    for (const c of changes ?? [{ guest, joined }]) {
      if (c.joined) r.members.set(c.guest.id, c.guest);
      else r.members.delete(c.guest.id);
      if (c.guest.id !== state.me?.id) notice(room, `${c.guest.name} ${c.joined ? "joined" : "left"}`);
    }
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
  listenForCalls(socket);
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
  $("call-audio").hidden = $("call-video").hidden = !dm;
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

// Calls. A mesh of RTCPeerConnections, one per other participant (a call has at most 8): whoever is
// in the call already sends a newcomer the offer, so two sides never offer to each other at once.
// The worker relays `offer`, `answer` and `ice-candidate` between the call's participants only and
// hands out the ICE servers (`ice:servers`), TURN credentials included when it has a TURN secret.
const call = {
  id: null,
  media: null,
  local: null, // this side's MediaStream
  peers: new Map(), // guest id -> { pc, guest, queue: [ICE candidates before the remote description] }
  invite: null, // { call, from, media } ringing here
  why: null, // why the call is ending, when the other side said (declined)
  starting: false, // asking for the camera or sending the invite: a second click waits
  early: [], // what came for a call before its id was known here: [event, data]
  pending: new Map(), // guest id -> ICE candidates that came before that guest's offer
  iceServers: [],
};
state.call = call; // for tests: call.peers' connection states and getStats

function listenForCalls(socket) {
  socket.on("ice:servers", ({ iceServers }) => (call.iceServers = iceServers || []));
  socket.on("call:invite", (invite) => {
    // Busy: decline a second call rather than ring over the first.
    if (call.id || call.invite) return void ask("call:reject", { call: invite.call });
    call.invite = invite;
    $("incoming-text").textContent = `${invite.from.name} is calling (${invite.media === "video" ? "video" : "voice"})`;
    $("incoming").hidden = false;
  });
  socket.on("call:accept", (data) => {
    if (data.call === call.id) offerTo(data.guest);
    // Accepted before the invite's answer came back (it carries the call's id).
    else if (call.starting) call.early.push(["call:accept", data]);
  });
  socket.on("call:reject", ({ call: id, guest }) => {
    if (id === call.id) call.why = `${guest.name} declined`;
  });
  socket.on("call:leave", ({ call: id, guest }) => {
    if (id === call.id) dropPeer(guest.id);
  });
  socket.on("call:end", ({ call: id, reason, by }) => {
    if (call.invite?.call === id) {
      call.invite = null;
      $("incoming").hidden = true;
    }
    if (id !== call.id) return;
    const hungUp = by && by.id !== state.me?.id ? `${by.name} hung up` : "Call ended";
    const why = reason === "no answer" ? "No answer" : call.why || hungUp;
    endCall(why);
  });
  socket.on("offer", async ({ call: id, from, sdp }) => {
    if (id !== call.id) return;
    const p = peer(from);
    await p.pc.setRemoteDescription(sdp);
    await drain(p);
    await p.pc.setLocalDescription(await p.pc.createAnswer());
    ask("answer", { call: id, to: from.id, sdp: p.pc.localDescription.toJSON() });
  });
  socket.on("answer", async ({ call: id, from, sdp }) => {
    const p = id === call.id && call.peers.get(from.id);
    if (!p) return;
    await p.pc.setRemoteDescription(sdp);
    await drain(p);
  });
  socket.on("ice-candidate", ({ call: id, from, candidate }) => {
    if (id !== call.id || !candidate) return;
    const p = call.peers.get(from.id);
    // The worker relays each signal as it comes, so a candidate may overtake its offer.
    if (!p) {
      if (!call.pending.has(from.id)) call.pending.set(from.id, []);
      call.pending.get(from.id).push(candidate);
      return;
    }
    if (p.pc.remoteDescription) p.pc.addIceCandidate(candidate).catch(() => {});
    else p.queue.push(candidate);
  });
}

async function drain(p) {
  for (const candidate of p.queue.splice(0)) await p.pc.addIceCandidate(candidate).catch(() => {});
}

/// The connection to `guest` in the current call, made on first use with this side's tracks.
function peer(guest) {
  if (call.peers.has(guest.id)) return call.peers.get(guest.id);
  const pc = new RTCPeerConnection({ iceServers: call.iceServers });
  const p = { pc, guest, queue: call.pending.get(guest.id) || [] };
  call.pending.delete(guest.id);
  call.peers.set(guest.id, p);
  for (const track of call.local.getTracks()) pc.addTrack(track, call.local);
  pc.onicecandidate = ({ candidate }) => {
    if (candidate) state.socket.emit("ice-candidate", { call: call.id, to: guest.id, candidate: candidate.toJSON() });
  };
  const figure = document.createElement("figure");
  figure.dataset.guest = guest.id;
  const video = document.createElement("video");
  video.autoplay = video.playsInline = true;
  const caption = document.createElement("figcaption");
  caption.textContent = guest.name;
  figure.append(video, caption);
  $("videos").append(figure);
  pc.ontrack = ({ streams }) => (video.srcObject = streams[0]);
  pc.onconnectionstatechange = () => {
    const s = pc.connectionState;
    if (s === "connected") callStatus(`In a call with ${[...call.peers.values()].map((x) => x.guest.name).join(", ")}`);
    else if (s === "failed") callStatus(`Cannot reach ${guest.name} (a TURN server may be needed)`);
  };
  return p;
}

function dropPeer(id) {
  const p = call.peers.get(id);
  if (!p) return;
  p.pc.close();
  call.peers.delete(id);
  document.querySelector(`#videos figure[data-guest="${CSS.escape(id)}"]`)?.remove();
}

async function offerTo(guest) {
  const p = peer(guest);
  await p.pc.setLocalDescription(await p.pc.createOffer());
  ask("offer", { call: call.id, to: guest.id, sdp: p.pc.localDescription.toJSON() });
}

/// This side's microphone (and camera): `false`, with a notice, when the browser refuses them.
async function openMedia(media) {
  for (const track of call.local?.getTracks() || []) track.stop();
  try {
    call.local = await navigator.mediaDevices.getUserMedia({ audio: true, video: media === "video" });
  } catch (e) {
    notice(state.current, `Cannot use the ${media === "video" ? "camera or microphone" : "microphone"}: ${e.message}`);
    return false;
  }
  call.media = media;
  $("local").srcObject = call.local;
  $("local").hidden = media !== "video";
  $("camera").hidden = media !== "video";
  $("mute").textContent = "Mute";
  $("camera").textContent = "Camera off";
  $("call").hidden = false;
  return true;
}

function callStatus(text) {
  $("call-status").textContent = text;
}

async function startCall(media) {
  const room = state.current;
  if (call.id || call.starting || !room?.startsWith("@dm:")) return;
  if (!window.RTCPeerConnection || !navigator.mediaDevices) return notice(room, "This browser cannot make calls (calls need HTTPS, or localhost)");
  call.starting = true;
  try {
    if (!(await openMedia(media))) return;
    const reply = await ask("call:invite", { to: [room.slice(4)], media });
    if (!reply.ok) {
      endCall();
      return notice(room, reply.error);
    }
    call.id = reply.call;
    callStatus(`Calling ${conversation(room).title || "guest"}…`);
  } finally {
    call.starting = false;
  }
  for (const [event, data] of call.early.splice(0)) if (event === "call:accept" && data.call === call.id) offerTo(data.guest);
}

async function acceptCall() {
  const invite = call.invite;
  call.invite = null;
  $("incoming").hidden = true;
  if (!invite || call.id || call.starting) return;
  if (!(await openMedia(invite.media))) return void ask("call:reject", { call: invite.call });
  call.id = invite.call;
  callStatus(`Connecting to ${invite.from.name}…`);
  const reply = await ask("call:accept", { call: invite.call });
  if (!reply.ok) endCall(reply.error);
}

/// Closes every connection and releases the camera and microphone.
function endCall(why) {
  for (const id of [...call.peers.keys()]) dropPeer(id);
  for (const track of call.local?.getTracks() || []) track.stop();
  call.id = call.local = call.media = call.why = null;
  call.early = [];
  call.pending.clear();
  $("local").srcObject = null;
  $("call").hidden = true;
  if (why && state.current) notice(state.current, why);
}

$("call-audio").onclick = () => startCall("audio");
$("call-video").onclick = () => startCall("video");
$("accept").onclick = acceptCall;
$("decline").onclick = () => {
  const invite = call.invite;
  call.invite = null;
  $("incoming").hidden = true;
  if (invite) ask("call:reject", { call: invite.call });
};
$("hangup").onclick = () => {
  if (call.id) ask("call:end", { call: call.id });
  endCall("Call ended");
};
$("mute").onclick = () => {
  const tracks = call.local?.getAudioTracks() || [];
  const muted = tracks.some((t) => t.enabled);
  tracks.forEach((t) => (t.enabled = !muted));
  $("mute").textContent = muted ? "Unmute" : "Mute";
};
$("camera").onclick = () => {
  const tracks = call.local?.getVideoTracks() || [];
  const off = tracks.some((t) => t.enabled);
  tracks.forEach((t) => (t.enabled = !off));
  $("camera").textContent = off ? "Camera on" : "Camera off";
};

// A returning visitor goes straight in, as the guest it was.
if (localStorage.getItem("chat.session")) connect();
