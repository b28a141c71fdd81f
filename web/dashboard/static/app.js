/* The dashboard's own script: times in the viewer's zone, countdowns, confirmations, and live
 * updates from the tenant's event stream.
 *
 * The stream is the API's SSE stream (/api/v1/events, authenticated by the session cookie). A page
 * names where it starts (data-last-event-id: the newest event when it was rendered), so nothing that
 * happens between rendering and connecting is missed. When the connection drops, the browser's own
 * reconnect sends Last-Event-ID; when the browser gives up (the server answered an error) this script
 * opens a new stream with last_event_id, after a growing pause, and says "Reconnecting…" meanwhile.
 * Each event asks the server for the one fragment it changes (a row, a message) and replaces the
 * element with that id, or inserts it where none is yet: an element never appears twice.
 *
 * No inline script, no eval: the page's Content-Security-Policy allows neither.
 */
(function () {
  "use strict";

  var KNOWN_TYPES = ["bot.state", "bot.qr", "bot.pair_code", "bot.paired", "message.in", "message.out",
    "message.status", "outbox.dead", "ai.error", "conversation.state"];

  // -- time, in the viewer's zone ----------------------------------------------------------------

  function formatTime(el) {
    var d = new Date(el.getAttribute("datetime"));
    if (isNaN(d.getTime())) return;
    var now = new Date();
    var style = el.getAttribute("data-style") || "short";
    var text;
    if (style === "full") {
      text = d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
    } else if (style === "seconds") {
      text = d.toDateString() === now.toDateString()
        ? d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" })
        : d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
    } else if (d.toDateString() === now.toDateString()) {
      text = d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
    } else {
      text = d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
    }
    el.textContent = text;
    el.title = d.toLocaleString(undefined, { dateStyle: "full", timeStyle: "long" });
  }

  function rememberZone() {
    try {
      var zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
      if (zone && /^[A-Za-z0-9\/_+-]{1,63}$/.test(zone) && document.cookie.indexOf("tz=" + zone) === -1) {
        document.cookie = "tz=" + zone + "; path=/; max-age=31536000; samesite=lax";
      }
    } catch (e) { /* an old browser: the server's UTC stays */ }
  }

  function countdown(el) {
    var until = new Date(el.getAttribute("data-until")).getTime();
    if (isNaN(until)) return;
    var left = Math.round((until - Date.now()) / 1000);
    if (left <= 0) { el.textContent = "now"; return; }
    var m = Math.floor(left / 60), s = left % 60;
    el.textContent = "in " + (m >= 60 ? Math.floor(m / 60) + " h " + (m % 60) + " min" : m ? m + " min " + s + " s" : s + " s");
  }

  // The elements of ``root`` matching ``selector``, ``root`` itself included.
  function within(root, selector) {
    var found = Array.prototype.slice.call(root.querySelectorAll(selector));
    if (root.matches && root.matches(selector)) found.unshift(root);
    return found;
  }

  function enhance(root) {
    within(root, "time[datetime]").forEach(formatTime);
    within(root, "[data-until]").forEach(countdown);
    within(root, "[data-upsert-into]").forEach(function (box) {
      var target = document.getElementById(box.getAttribute("data-upsert-into"));
      Array.prototype.slice.call(box.children).forEach(function (el) { if (target) upsert(target, el); });
      box.remove();
    });
  }

  // -- confirmations and small conveniences ----------------------------------------------------

  document.addEventListener("submit", function (e) {
    var form = e.target;
    var message = form.getAttribute && form.getAttribute("data-confirm");
    if (!message) return;
    if (!window.confirm(message)) {
      e.preventDefault();
      e.stopImmediatePropagation();
      return;
    }
    if (!form.querySelector("input[name=confirm]")) {
      var input = document.createElement("input");
      input.type = "hidden"; input.name = "confirm"; input.value = "yes";
      form.appendChild(input);
    }
  }, true);

  document.addEventListener("click", function (e) {
    var button = e.target.closest && e.target.closest("[data-copy]");
    if (!button) return;
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (!source || !navigator.clipboard) return;
    navigator.clipboard.writeText(source.value || source.textContent).then(function () {
      button.textContent = "Copied";
    });
  });

  // -- fragments -------------------------------------------------------------------------------

  function parse(html) {
    var t = document.createElement("template");
    t.innerHTML = html.trim();
    return t.content.firstElementChild;
  }

  function fetchFragment(url) {
    return fetch(url, { credentials: "same-origin", headers: { "HX-Request": "true" } }).then(function (r) {
      if (r.status === 401) { window.location.assign("/signin?next=" + encodeURIComponent(location.pathname)); }
      if (r.status !== 200) return null;
      return r.text().then(parse);
    });
  }

  function activate(el) {
    if (window.htmx) window.htmx.process(el);
    enhance(el);
  }

  // Put ``el`` into ``list``: in place of the element with its id, or by its data-order among its
  // siblings (ascending), or at the end.
  function upsert(list, el, where) {
    var old = document.getElementById(el.id);
    if (old && where !== "top") { old.replaceWith(el); activate(el); return; }
    if (old) old.remove();
    if (where === "top") {
      list.insertBefore(el, list.firstElementChild);
    } else {
      var order = el.getAttribute("data-order");
      var before = null;
      if (order) {
        Array.prototype.some.call(list.children, function (child) {
          if ((child.getAttribute("data-order") || "") > order) { before = child; return true; }
          return false;
        });
      }
      list.insertBefore(el, before);
    }
    activate(el);
  }

  function refresh(id, url) {
    if (!document.getElementById(id)) return Promise.resolve();
    return fetchFragment(url).then(function (el) {
      var old = document.getElementById(id);
      if (el && old) { old.replaceWith(el); activate(el); }
    });
  }

  // -- the live stream -------------------------------------------------------------------------

  function Live(baseUrl, startId, types, onEvent) {
    this.baseUrl = baseUrl;
    this.lastId = startId;
    this.types = types;
    this.onEvent = onEvent;
    this.source = null;
    this.retry = 0;
    this.timer = null;
    this.status = document.getElementById("live-status");
  }

  Live.prototype.show = function (text) {
    if (!this.status) return;
    this.status.textContent = text;
    this.status.hidden = !text;
    document.body.classList.toggle("offline", !!text);
  };

  Live.prototype.url = function () {
    var url = this.baseUrl;
    if (this.lastId !== null && this.lastId !== "") {
      url += (url.indexOf("?") === -1 ? "?" : "&") + "last_event_id=" + encodeURIComponent(this.lastId);
    }
    return url;
  };

  Live.prototype.open = function () {
    var self = this;
    this.close();
    var source = this.source = new EventSource(this.url());
    source.onopen = function () { self.retry = 0; self.show(""); };
    source.onerror = function () {
      self.show("Reconnecting…");
      if (source.readyState === EventSource.CLOSED) self.later();
    };
    var handle = function (e) {
      if (e.lastEventId) {
        var id = Number(e.lastEventId);
        if (self.lastId !== null && id <= Number(self.lastId)) return; // seen already
        self.lastId = e.lastEventId;
      }
      var event;
      try { event = JSON.parse(e.data); } catch (err) { return; }
      self.onEvent(event);
    };
    this.types.forEach(function (type) { source.addEventListener(type, handle); });
    source.addEventListener("stream.closed", function (e) {
      var data = {};
      try { data = JSON.parse(e.data); } catch (err) { /* keep {} */ }
      if (data.reason === "signed out") { window.location.assign("/signin"); return; }
      self.show("Reconnecting…"); // the browser reconnects by itself, with Last-Event-ID
    });
  };

  Live.prototype.later = function () {
    var self = this;
    this.close();
    this.retry = Math.min(this.retry + 1, 6);
    var delay = Math.min(30000, 500 * Math.pow(2, this.retry)) * (0.5 + Math.random() / 2);
    this.timer = window.setTimeout(function () { self.open(); }, delay);
  };

  Live.prototype.close = function () {
    if (this.timer) { window.clearTimeout(this.timer); this.timer = null; }
    if (this.source) { this.source.close(); this.source = null; }
  };

  // -- what each page does with an event -------------------------------------------------------

  var pages = {};

  pages.bots = function (body) {
    return function (ev) {
      if (ev.bot_id) refresh("bot-" + ev.bot_id, "/app/bots/" + ev.bot_id + "/row");
    };
  };

  pages.bot = function (body) {
    var bot = body.getAttribute("data-bot");
    return function (ev) {
      if (ev.bot_id === bot) refresh("bot-panel", "/app/bots/" + bot + "/panel");
    };
  };

  pages.inbox = function (body) {
    var list = document.getElementById("conversations");
    var filter = body.getAttribute("data-bot");
    var first = body.getAttribute("data-first-page") === "true";
    return function (ev) {
      if (!list || (filter && ev.bot_id !== filter)) return;
      var p = ev.payload || {};
      var url;
      var row = null;
      if (p.contact_id) {
        url = "/app/inbox/row?contact=" + encodeURIComponent(p.contact_id);
        row = document.getElementById("conv-" + p.contact_id);
      } else if (p.to && ev.bot_id) {
        url = "/app/inbox/row?bot=" + encodeURIComponent(ev.bot_id) + "&jid=" + encodeURIComponent(p.to);
        row = list.querySelector('[data-bot="' + CSS.escape(ev.bot_id) + '"][data-jid="' + CSS.escape(p.to) + '"]');
      } else {
        return;
      }
      var moves = ev.type === "message.in" || ev.type === "message.out";
      if (!row && !(moves && first)) return; // a conversation further down stays where it is
      fetchFragment(url).then(function (el) {
        if (!el) return;
        var empty = document.getElementById("inbox-empty");
        if (empty) empty.remove();
        upsert(list, el, moves && first ? "top" : "place");
      });
    };
  };

  pages.conversation = function (body) {
    var contact = body.getAttribute("data-contact");
    var bot = body.getAttribute("data-bot");
    var jid = body.getAttribute("data-jid");
    var latest = body.getAttribute("data-latest") === "true";
    var list = document.getElementById("messages");
    var base = "/app/inbox/" + contact;
    if (latest && !location.hash) window.scrollTo(0, document.body.scrollHeight); // a chat opens at its end
    function atBottom() {
      return window.innerHeight + window.scrollY >= document.body.scrollHeight - 80;
    }
    function show(query) {
      var stick = atBottom();
      return fetchFragment(base + "/message?" + query).then(function (el) {
        if (!el || !list) return;
        if (!latest && !document.getElementById(el.id)) return; // an older page takes no new rows
        var empty = document.getElementById("messages-empty");
        if (empty) empty.remove();
        upsert(list, el);
        if (stick) window.scrollTo(0, document.body.scrollHeight);
      });
    }
    return function (ev) {
      if (ev.bot_id !== bot) return;
      var p = ev.payload || {};
      if (ev.type === "conversation.state") {
        if (p.contact_id === contact) refresh("conv-head", base + "/head");
      } else if (p.contact_id === contact && p.message_id) {
        show("id=" + encodeURIComponent(p.message_id));
      } else if (ev.type === "message.status" && p.message_id && document.getElementById("msg-" + p.message_id)) {
        show("id=" + encodeURIComponent(p.message_id));
      } else if ((ev.type === "message.out" || ev.type === "outbox.dead") && p.to === jid && p.outbox_id) {
        show("outbox=" + encodeURIComponent(p.outbox_id));
      }
    };
  };

  pages.events = function (body) {
    var rows = document.getElementById("event-rows");
    var seen = {};
    var botNames = {};
    document.querySelectorAll("#ev-bot option").forEach(function (o) { if (o.value) botNames[o.value] = o.textContent; });
    rows.querySelectorAll("tr[data-id]").forEach(function (tr) { seen[tr.getAttribute("data-id")] = true; });
    return function (ev) {
      if (seen[ev.id]) return;
      seen[ev.id] = true;
      var tr = document.createElement("tr");
      tr.setAttribute("data-id", ev.id);
      var cells = [String(ev.id), "", ev.type, ev.bot_id ? (botNames[ev.bot_id] || ev.bot_id.slice(0, 8)) : "—"];
      cells.forEach(function (text, i) {
        var td = document.createElement("td");
        if (i === 1) {
          var t = document.createElement("time");
          t.setAttribute("datetime", ev.created_at);
          t.setAttribute("data-style", "seconds");
          td.className = "nowrap";
          td.appendChild(t);
          formatTime(t);
        } else {
          td.textContent = text;
        }
        tr.appendChild(td);
      });
      var payload = document.createElement("td");
      var code = document.createElement("code");
      code.textContent = JSON.stringify(ev.payload);
      payload.appendChild(code);
      tr.appendChild(payload);
      var empty = document.getElementById("events-empty");
      if (empty) empty.remove();
      rows.insertBefore(tr, rows.firstElementChild);
      while (rows.children.length > 500) rows.removeChild(rows.lastElementChild);
    };
  };

  function eventsControls(live) {
    // Changing the filter loads the page again (a plain GET form): the rows shown and the stream
    // then follow the same filter. Pausing closes the stream; resuming opens it after the last
    // event shown, so what happened meanwhile arrives then, without a gap.
    var pause = document.getElementById("ev-pause");
    if (!pause) return;
    pause.addEventListener("click", function () {
      live.paused = !live.paused;
      pause.textContent = live.paused ? "Resume" : "Pause";
      pause.setAttribute("aria-pressed", live.paused ? "true" : "false");
      document.getElementById("ev-paused").hidden = !live.paused;
      if (live.paused) live.close(); else live.open();
    });
  }

  // -- failed requests -------------------------------------------------------------------------

  // htmx swaps no 4xx/5xx answer by default. A form fragment showing its own error says so
  // (X-Form-Error) and is swapped in like a success; any other failure shows a notice, never nothing.
  function requestErrors() {
    var notice = document.getElementById("request-error");
    function say(text) {
      if (!notice) return;
      notice.textContent = text;
      notice.hidden = !text;
    }
    document.body.addEventListener("htmx:beforeSwap", function (e) {
      var xhr = e.detail.xhr;
      if (xhr.status >= 400 && xhr.getResponseHeader("X-Form-Error")) {
        e.detail.shouldSwap = true;
        e.detail.isError = false;
      }
    });
    document.body.addEventListener("htmx:responseError", function (e) {
      var xhr = e.detail.xhr;
      if (xhr.status === 401) return; // HX-Redirect takes the page to the sign-in
      if (xhr.status === 429) {
        // The session's request limit: Retry-After says for how long (whole seconds).
        var wait = parseInt(xhr.getResponseHeader("Retry-After") || "", 10);
        if (!(wait > 0)) wait = 1;
        say("Too many requests from this session: wait " + wait + " second" + (wait === 1 ? "" : "s") +
            " and try again.");
        return;
      }
      say("That did not work: the server answered " + xhr.status + (xhr.statusText ? " " + xhr.statusText : "") +
          ". Reload the page and try again.");
    });
    document.body.addEventListener("htmx:sendError", function (e) {
      // A form's own error described the attempt before this one: it no longer holds.
      var form = e.detail.elt;
      if (form && form.querySelectorAll) {
        form.querySelectorAll(".note.error").forEach(function (n) { n.remove(); });
        form.querySelectorAll("[aria-invalid]").forEach(function (n) {
          n.removeAttribute("aria-invalid");
          n.removeAttribute("aria-describedby");
        });
      }
      say("That did not reach the server: check the connection and try again.");
    });
    document.body.addEventListener("htmx:afterRequest", function (e) {
      if (e.detail.successful) say("");
    });
  }

  function start() {
    rememberZone();
    requestErrors();
    enhance(document);
    window.setInterval(function () { document.querySelectorAll("[data-until]").forEach(countdown); }, 1000);
    if (window.htmx) window.htmx.onLoad(function (el) { if (el !== document.body) enhance(el); });
    var body = document.body;
    var streamUrl = body.getAttribute("data-live");
    var page = pages[body.getAttribute("data-page") || ""];
    if (!streamUrl || !page || !window.EventSource) return;
    var types = (body.getAttribute("data-live-types") || KNOWN_TYPES.join(",")).split(",");
    var live = new Live(streamUrl, body.getAttribute("data-last-event-id"), types, page(body));
    window.wabotLive = live; // for the browser tests: the stream's state
    if (body.getAttribute("data-page") === "events") eventsControls(live);
    live.open();
    window.addEventListener("pagehide", function () { live.close(); });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
