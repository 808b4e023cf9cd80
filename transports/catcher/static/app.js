// The mail catcher's page: plain JS, no build step, no dependencies.
// Everything taken from a message goes into the page as text (textContent), never as markup;
// the HTML body goes into a sandboxed srcdoc frame that runs no script and loads nothing remote.
// The page writes its state into the DOM (body data-* attributes) so tests can read it.
"use strict";

(() => {
  const API = "/api/v1";
  const POLL_MS = 3000;
  const INLINE_IMAGE_MAX = 2 * 1024 * 1024;
  const FRAME_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'";
  const FRAME_HEAD =
    '<!doctype html><meta charset="utf-8">' +
    `<meta http-equiv="Content-Security-Policy" content="${FRAME_CSP}">` +
    '<meta name="referrer" content="no-referrer">';

  const $ = (id) => document.getElementById(id);
  const body = document.body;
  const state = {
    messages: [],
    total: 0,
    selected: null,
    query: "",
    message: null,
    rawFor: null,
    tab: "text",
    poller: null,
    events: null,
    listToken: 0,
  };

  // ---- helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null) continue;
      if (key === "class") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child && child.nodeType ? child : String(child));
    }
    return node;
  }

  async function getJSON(url) {
    const response = await fetch(url, { cache: "no-store" });
    if (!response.ok) {
      const error = new Error(`${response.status} ${await response.text()}`);
      error.status = response.status;
      throw error;
    }
    return response.json();
  }

  function address(entry) {
    if (!entry || !entry.Address) return entry && entry.Name ? entry.Name : "";
    return entry.Name ? `${entry.Name} <${entry.Address}>` : entry.Address;
  }

  function addresses(list) {
    return (list || []).map(address).filter(Boolean).join(", ");
  }

  function size(bytes) {
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} kB`;
    return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
  }

  function when(text) {
    const date = new Date(text);
    return Number.isNaN(date.getTime()) ? text : date.toLocaleString();
  }

  function messageUrl(id) {
    return `${API}/message/${encodeURIComponent(id)}`;
  }

  function notice(text) {
    $("notice").textContent = text || "";
    $("notice").hidden = !text;
  }

  function pageUrl() {
    const params = new URLSearchParams();
    if (state.selected) params.set("id", state.selected);
    if (state.query) params.set("q", state.query);
    const query = params.toString();
    return query ? `?${query}` : location.pathname;
  }

  // ---- the list

  async function loadList() {
    const token = ++state.listToken;
    const url = state.query
      ? `${API}/search?limit=1000&query=${encodeURIComponent(state.query)}`
      : `${API}/messages?limit=1000`;
    try {
      const data = await getJSON(url);
      if (token !== state.listToken) return; // a newer load is under way
      state.messages = data.messages;
      state.total = data.total;
      renderList();
      body.dataset.listState = "ready";
    } catch (error) {
      body.dataset.listState = "error";
      notice(`Cannot load the messages: ${error.message}`);
    }
  }

  function renderList() {
    $("list").replaceChildren(...state.messages.map(listItem));
    $("empty").hidden = state.messages.length > 0;
    $("empty").textContent = state.query
      ? "No message matches the search."
      : "No messages. Mail sent to the SMTP server shows up here as it arrives.";
    const shown = state.messages.length;
    const plural = state.total === 1 ? "" : "s";
    if (state.query) $("count").textContent = `${shown} match${shown === 1 ? "" : "es"} among ${state.total} message${plural}`;
    else if (state.total > shown) $("count").textContent = `The newest ${shown} of ${state.total} messages`;
    else $("count").textContent = `${shown} message${shown === 1 ? "" : "s"}`;
    body.dataset.count = String(shown);
    markSelected();
  }

  function listItem(summary) {
    const link = el(
      "a",
      { href: `?id=${encodeURIComponent(summary.ID)}`, class: "item", "data-id": summary.ID },
      el("span", { class: "from" }, address(summary.From) || summary.Envelope.From || "<>"),
      el("time", { datetime: summary.Created }, when(summary.Created)),
      el("span", { class: "subject" }, summary.Subject || "(no subject)"),
      el("span", { class: "snippet" }, summary.Snippet),
      el(
        "span",
        { class: "meta" },
        `to ${addresses(summary.To) || summary.Envelope.To.join(", ")} · ${size(summary.Size)}`,
        summary.Attachments
          ? ` · ${summary.Attachments} attachment${summary.Attachments === 1 ? "" : "s"}`
          : "",
        ...summary.Tags.map((tag) => el("span", { class: "tag" }, tag)),
      ),
    );
    link.addEventListener("click", (event) => {
      if (event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) return;
      event.preventDefault();
      openMessage(summary.ID, true);
    });
    return el("li", {}, link);
  }

  function markSelected() {
    for (const link of $("list").querySelectorAll("a.item")) {
      const selected = link.dataset.id === state.selected;
      link.classList.toggle("selected", selected);
      if (selected) link.setAttribute("aria-current", "true");
      else link.removeAttribute("aria-current");
    }
  }

  function added(summary) {
    if (state.query) {
      loadList(); // does it match? the server decides
      return;
    }
    if (state.messages.some((m) => m.ID === summary.ID)) return;
    state.messages.unshift(summary);
    state.total += 1;
    renderList();
  }

  function deleted(ids) {
    const gone = new Set(ids);
    const before = state.messages.length;
    state.messages = state.messages.filter((m) => !gone.has(m.ID));
    state.total = Math.max(0, state.total - (before - state.messages.length));
    renderList();
    if (state.selected && gone.has(state.selected)) {
      closeMessage(true);
      notice("That message was deleted.");
    }
  }

  // ---- one message

  async function openMessage(id, push) {
    state.selected = id;
    if (push) history.pushState({ id }, "", pageUrl());
    markSelected();
    notice("");
    body.dataset.viewState = "loading";
    let message;
    try {
      message = await getJSON(messageUrl(id));
    } catch (error) {
      if (state.selected !== id) return;
      closeMessage(false);
      body.dataset.viewState = "missing";
      notice(error.status === 404 ? `No message ${id}: it was deleted.` : error.message);
      return;
    }
    const html = message.HTML ? await inlineImages(message, message.HTML) : "";
    if (state.selected !== id) return; // another message was opened meanwhile
    render(message, html);
  }

  function render(message, html) {
    state.message = message;
    state.rawFor = null;
    $("placeholder").hidden = true;
    $("view").hidden = false;
    $("view").dataset.id = message.ID;
    $("subject").textContent = message.Subject || "(no subject)";
    $("download-raw").href = `${messageUrl(message.ID)}/raw?dl=1`;

    const rows = [
      ["From", address(message.From)],
      ["To", addresses(message.To)],
      ["Cc", addresses(message.Cc)],
      ["Bcc", addresses(message.Bcc)],
      ["Reply-To", addresses(message.ReplyTo)],
      ["Date", when(message.Date)],
      ["Received", when(message.Created)],
      ["Envelope", `from <${message.Envelope.From}> to ${message.Envelope.To.map((a) => `<${a}>`).join(", ")}`],
      ["Size", size(message.Size)],
      ["Tags", message.Tags.join(", ")],
    ].filter(([, value]) => value);
    $("summary").tBodies[0].replaceChildren(
      ...rows.map(([name, value]) => el("tr", {}, el("th", {}, name), el("td", {}, value))),
    );

    const headerRows = [];
    for (const [name, values] of Object.entries(message.Headers)) {
      for (const value of values) headerRows.push(el("tr", {}, el("th", {}, name), el("td", {}, value)));
    }
    $("all-headers").tBodies[0].replaceChildren(...headerRows);

    $("text-body").textContent = message.Text || "";
    $("raw").textContent = "";
    renderAttachments(message);
    renderHtml(html);
    showTab(message.HTML ? "html" : "text");
    markSelected();
    body.dataset.viewState = "ready";
  }

  function partLink(message, part) {
    const name = part.FileName || `part ${part.PartID}`;
    return el(
      "li",
      {},
      el("a", { href: `${messageUrl(message.ID)}/part/${encodeURIComponent(part.PartID)}`, download: name, class: "part", "data-part": part.PartID }, name),
      el("span", { class: "muted" }, ` ${part.ContentType}, ${size(part.Size)}`),
    );
  }

  function renderAttachments(message) {
    const items = message.Attachments.map((part) => partLink(message, part));
    if (message.Inline.length) {
      items.push(el("li", { class: "muted" }, "Inline:"));
      items.push(...message.Inline.map((part) => partLink(message, part)));
    }
    if (!items.length) items.push(el("li", { class: "muted" }, "No attachments."));
    $("attachments").replaceChildren(...items);
    const count = message.Attachments.length;
    $("attachment-count").textContent = count ? `(${count})` : "";
  }

  async function inlineImages(message, html) {
    // cid: images become data: URLs (the frame may load nothing else).
    for (const part of message.Inline) {
      if (!part.ContentID || !part.ContentType.startsWith("image/") || part.Size > INLINE_IMAGE_MAX) continue;
      if (!html.includes(`cid:${part.ContentID}`)) continue;
      try {
        const response = await fetch(`${messageUrl(message.ID)}/part/${encodeURIComponent(part.PartID)}`);
        if (!response.ok) continue;
        const blob = await response.blob();
        const data = await new Promise((resolve, reject) => {
          const reader = new FileReader();
          reader.onload = () => resolve(reader.result);
          reader.onerror = () => reject(reader.error);
          reader.readAsDataURL(blob);
        });
        html = html.split(`cid:${part.ContentID}`).join(data);
      } catch (_) {
        // leave the cid: reference: the image just does not show
      }
    }
    return html;
  }

  function renderHtml(html) {
    const holder = $("html-holder");
    if (!html) {
      holder.replaceChildren(el("p", { class: "muted" }, "This message has no HTML part."));
      return;
    }
    const frame = document.createElement("iframe");
    frame.setAttribute("sandbox", ""); // before the content: no script, no forms, no popups
    frame.setAttribute("referrerpolicy", "no-referrer");
    frame.setAttribute("title", "The message's HTML part");
    frame.id = "html-frame";
    frame.srcdoc = FRAME_HEAD + html;
    holder.replaceChildren(frame);
  }

  function closeMessage(push) {
    state.selected = null;
    state.message = null;
    $("view").hidden = true;
    $("placeholder").hidden = false;
    $("html-holder").replaceChildren();
    body.dataset.viewState = "none";
    if (push) history.pushState({}, "", pageUrl());
    markSelected();
  }

  async function showTab(name) {
    state.tab = name;
    for (const button of $("tabs").querySelectorAll("button")) {
      button.setAttribute("aria-selected", String(button.dataset.tab === name));
    }
    for (const panel of document.querySelectorAll(".tab")) panel.hidden = panel.id !== `tab-${name}`;
    const message = state.message;
    if (name === "raw" && message && state.rawFor !== message.ID) {
      state.rawFor = message.ID;
      try {
        const response = await fetch(`${messageUrl(message.ID)}/raw`, { cache: "no-store" });
        if (state.message === message) $("raw").textContent = await response.text();
      } catch (error) {
        $("raw").textContent = `Cannot load the source: ${error.message}`;
      }
    }
  }

  // ---- deleting

  async function deleteOne() {
    const id = state.selected;
    if (!id) return;
    const response = await fetch(messageUrl(id), { method: "DELETE" });
    if (!response.ok && response.status !== 404) {
      notice(`Cannot delete: ${await response.text()}`);
      return;
    }
    deleted([id]);
    notice("Deleted.");
  }

  let armed = null;
  async function deleteAll() {
    const button = $("delete-all");
    if (!armed) {
      button.textContent = "Really delete all?";
      button.dataset.armed = "true";
      armed = setTimeout(disarm, 4000);
      return;
    }
    disarm();
    const response = await fetch(`${API}/messages`, { method: "DELETE" });
    if (!response.ok) {
      notice(`Cannot delete: ${await response.text()}`);
      return;
    }
    deleted(state.messages.map((m) => m.ID));
    if (state.selected) closeMessage(true);
    notice("All messages deleted.");
    loadList();
  }

  function disarm() {
    clearTimeout(armed);
    armed = null;
    $("delete-all").textContent = "Delete all";
    delete $("delete-all").dataset.armed;
  }

  // ---- live updates: server-sent events, polling when they are not to be had

  function setLive(mode) {
    body.dataset.live = mode;
    const live = $("live");
    live.textContent = { sse: "live", polling: "polling", connecting: "connecting" }[mode] || mode;
    live.dataset.live = mode;
    live.title = `Live updates: ${live.textContent}`;
  }

  function startPolling() {
    if (state.poller) return;
    setLive("polling");
    state.poller = setInterval(loadList, POLL_MS);
  }

  function stopPolling() {
    clearInterval(state.poller);
    state.poller = null;
  }

  function connectEvents() {
    if (typeof EventSource === "undefined") {
      startPolling();
      return;
    }
    const source = new EventSource(`${API}/events`);
    state.events = source;
    let failedAt = null;
    source.addEventListener("open", () => {
      if (failedAt !== null || state.poller) loadList(); // catch up on what was missed
      failedAt = null;
      stopPolling();
      setLive("sse");
    });
    source.addEventListener("error", () => {
      failedAt = failedAt ?? Date.now();
      if (source.readyState === EventSource.CLOSED) {
        startPolling();
        setTimeout(connectEvents, 10 * POLL_MS); // try the stream again later
      } else if (Date.now() - failedAt > POLL_MS) {
        startPolling(); // the browser keeps reconnecting meanwhile
      }
    });
    source.addEventListener("new", (event) => added(JSON.parse(event.data)));
    source.addEventListener("deleted", (event) => deleted(JSON.parse(event.data).IDs));
    source.addEventListener("reset", () => loadList());
  }

  // ---- wiring

  function fromLocation() {
    const params = new URLSearchParams(location.search);
    const query = params.get("q") || "";
    if (query !== state.query) {
      state.query = query;
      $("query").value = query;
      $("clear-search").hidden = !query;
      loadList();
    }
    const id = params.get("id");
    if (id && id !== state.selected) openMessage(id, false);
    else if (!id && state.selected) closeMessage(false);
  }

  function init() {
    $("search").addEventListener("submit", (event) => {
      event.preventDefault();
      state.query = $("query").value.trim();
      $("clear-search").hidden = !state.query;
      history.pushState({}, "", pageUrl());
      loadList();
    });
    $("clear-search").addEventListener("click", () => {
      $("query").value = "";
      state.query = "";
      $("clear-search").hidden = true;
      history.pushState({}, "", pageUrl());
      loadList();
    });
    $("tabs").addEventListener("click", (event) => {
      const button = event.target.closest("button[data-tab]");
      if (button) showTab(button.dataset.tab);
    });
    $("close").addEventListener("click", () => closeMessage(true));
    $("delete-one").addEventListener("click", deleteOne);
    $("delete-all").addEventListener("click", deleteAll);
    window.addEventListener("popstate", fromLocation);
    const params = new URLSearchParams(location.search);
    state.query = params.get("q") || "";
    $("query").value = state.query;
    $("clear-search").hidden = !state.query;
    setLive("connecting");
    connectEvents();
    loadList();
    const id = params.get("id");
    if (id) openMessage(id, false);
  }

  init();
})();
