/* lazyslide viewer: OpenSeadragon over the server's Deep Zoom endpoint, with live generation
   overlays from the server-sent events stream. */
"use strict";

// trace: the last generation choices (TileSocket.dispatch), for tests and the curious
const state = { slide: null, viewer: null, events: null, overlays: new Map(), dzMax: null, trace: [] };
// Show a magnification level upscaled up to this factor before asking for the next (deeper,
// lazily generated) one: zooming out never triggers generation of a whole deep level.
// bench/upscale.py (demo model, levels 1 -> 2, 6.46x apart): upscaled 2x, real tissue keeps 0.72
// of the detail the deeper level shows at that scale, 3x 0.57, 4x 0.48; a 1280 x 800 view at
// the switch needs 950, 442 and 260 deep tiles. 3 is the largest factor that keeps more than
// half the detail, at under half the tiles of 2.
const UPSCALE_BEFORE_NEXT_LEVEL = 3;
const $ = (id) => document.getElementById(id);

function showMessage(text) {
  const el = $("message");
  el.textContent = text;
  el.hidden = !text;
  if (text) setTimeout(() => { if (el.textContent === text) el.hidden = true; }, 6000);
}

function createViewer() {
  return OpenSeadragon({
    id: "viewer",
    prefixUrl: "/osd/images/",
    showNavigator: true,
    navigatorPosition: "BOTTOM_RIGHT",
    navigatorBackground: "#000",
    // Tiles can take seconds to generate, and a view's queue minutes on a CPU (a first 2x view
    // over level 2 of the demo model: 16 min on 2 cores): wait for them, do not hammer the
    // server. At 180 s, tiles at the back of the queue failed and the view stayed half upscaled.
    // A closed tile socket fails its pending tiles at once (TileSocket), so this only waits on
    // a live server.
    timeout: 1800000,
    tileRetryMax: 2,
    tileRetryDelay: 4000,
    imageLoaderLimit: 0, // tiles come over one WebSocket (see TileSocket): no connection cap
    maxZoomPixelRatio: 2,
    visibilityRatio: 0.5,
    constrainDuringPan: true,
    blendTime: 0.15,
    drawer: "canvas",
    crossOriginPolicy: false,
    gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
    showRotationControl: false,
  });
}

/* Tiles over one WebSocket per slide: tiles waiting for generation must not occupy the
   browser's six HTTP connections and starve tiles that are ready (see server/app.py).

   Generation follows the eye, not OpenSeadragon's request order. Every tile is first asked for
   without generation ("generate": false), so what exists comes back at once; the server answers
   the others 202, and the viewer asks it to generate them GENERATING_AT_ONCE at a time: each
   time a slot frees, the wanted tile nearest the centre of the view now, tiles of the main view
   before the navigator's (prefetch). A tile that leaves the view (panned away, or a level the
   zoom no longer needs) is cancelled on the server, which drops it if no one else waits, and
   kept here, unsent, until the view needs it again. */
// The server makes one tile at a time per device; two keep it busy while the next is chosen.
// A server with batches or several workers says how many keep it busy (generate_at_once).
const GENERATING_AT_ONCE = 2;

class TileSocket {
  constructor(slide, viewer) {
    this.url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/slides/${slide.id}/tiles`;
    this.viewer = viewer;
    this.atOnce = Math.max(GENERATING_AT_ONCE, slide.generate_at_once || 0);
    // id -> { context, address: {level, col, row}, prefetch, state: "probing" | "waiting" | "generating" }
    this.entries = new Map();
    this.nextId = 1;
    this.closed = false;
    this.connect();
  }
  connect() {
    this.ws = new WebSocket(this.url);
    this.ws.binaryType = "arraybuffer";
    this.ready = new Promise((resolve) => this.ws.addEventListener("open", resolve, { once: true }));
    this.ws.onmessage = (ev) => {
      if (typeof ev.data === "string") {
        const m = JSON.parse(ev.data);
        const entry = this.entries.get(m.id);
        if (entry && m.status === 202) { entry.state = "waiting"; this.dispatch(); return; }
        this.entries.delete(m.id);
        if (entry) entry.context.fail(`tile ${m.status}: ${m.error}`);
        if (m.status === 503) showMessage("The server is busy; tiles will be retried.");
        this.dispatch();
        return;
      }
      const id = new DataView(ev.data).getUint32(0);
      const entry = this.entries.get(id);
      this.entries.delete(id);
      if (entry) entry.context.finish(new Blob([ev.data.slice(4)], { type: "image/jpeg" }), null, "rasterBlob");
      this.dispatch();
    };
    this.ws.onclose = () => {
      for (const entry of this.entries.values()) entry.context.fail("tile connection closed");
      this.entries.clear();
      if (!this.closed) setTimeout(() => this.connect(), 2000);
    };
  }
  send(id, entry, generate) {
    // prefetch (the navigator): the server serves it after every viewer's on-screen tiles
    this.ws.send(JSON.stringify({ op: "get", id, ...entry.address, generate, prefetch: !!entry.prefetch }));
  }
  cancel(id) {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ op: "cancel", id }));
  }
  async get(context, prefetch) {
    const m = /_files\/(\d+)\/(\d+)_(\d+)\.\w+$/.exec(context.src);
    if (!m) { context.fail("bad tile url"); return; }
    const id = this.nextId++;
    context.userData.tileSocketId = id;
    const entry = { context, address: { level: +m[1], col: +m[2], row: +m[3] }, prefetch, state: "probing" };
    this.entries.set(id, entry);
    await this.ready;
    if (this.ws.readyState !== WebSocket.OPEN) { this.entries.delete(id); context.fail("not connected"); return; }
    this.send(id, entry, false);
  }
  abort(context) {
    const id = context.userData.tileSocketId;
    const entry = this.entries.get(id);
    if (!entry) return;
    this.entries.delete(id);
    if (entry.state !== "waiting") this.cancel(id);
    this.dispatch();
  }
  // What the view is now, for ranking tiles (null before the image is open).
  view() {
    const viewer = this.viewer;
    if (!viewer.world.getItemCount()) return null;
    const item = viewer.world.getItemAt(0);
    return {
      bounds: viewer.viewport.getBounds(true),
      zoom: item.viewportToImageZoom(viewer.viewport.getZoom(true)), // screen px per full-res px
      maxLevel: item.source.maxLevel,
      dzMax: state.dzMax ?? item.source.maxLevel,
    };
  }
  // How much `view` needs a tile now: lower first, Infinity for not at all.
  priority(entry, view) {
    const tile = entry.context.tile;
    if (!tile || !view) return entry.prefetch ? 2e6 : 1e6;
    if (entry.prefetch) return 1e6; // the navigator shows the whole slide: always wanted, last
    const v = view.bounds, b = tile.bounds;
    // off screen, with a margin: OpenSeadragon waits for every tile it asked for, so a tile it
    // still wants must never be held back (it asks for tiles touching the view's edge)
    const mx = v.width * 0.1, my = v.height * 0.1;
    if (b.x > v.x + v.width + mx || b.x + b.width < v.x - mx ||
        b.y > v.y + v.height + my || b.y + b.height < v.y - my) return Infinity;
    // level pixels per screen pixel: OpenSeadragon asks for at most 2, so a level 4 times finer
    // than the screen is left over from a deeper zoom; so is one above the magnification the
    // view shows (limitDeepZoomLevel)
    const levelPerScreen = Math.pow(2, tile.level - view.dzMax) / view.zoom;
    if (levelPerScreen > 4 || tile.level > view.maxLevel) return Infinity;
    const c = v.getCenter();
    const dx = b.x + b.width / 2 - c.x, dy = b.y + b.height / 2 - c.y;
    return Math.hypot(dx, dy) / v.width;
  }
  // Cancel generation of tiles the view left; start the most needed waiting ones.
  dispatch() {
    if (this.ws.readyState !== WebSocket.OPEN) return;
    const view = this.view();
    let generating = 0;
    const waiting = [];
    for (const [id, entry] of this.entries) {
      if (entry.state === "probing") continue;
      const p = this.priority(entry, view);
      if (entry.state === "generating") {
        if (p === Infinity) {
          entry.state = "waiting";
          this.cancel(id);
        } else {
          generating++;
        }
      } else if (p !== Infinity) {
        waiting.push([p, id, entry]);
      }
    }
    waiting.sort((a, b) => a[0] - b[0]);
    waiting.slice(0, Math.max(0, this.atOnce - generating)).forEach(([p, id, entry], i) => {
      entry.state = "generating";
      this.send(id, entry, true);
      // what was chosen, the best priority left waiting, how many were generating
      state.trace.push({ priority: p, nextBest: waiting[i + 1] ? waiting[i + 1][0] : null,
                         generating: generating + i + 1 });
      if (state.trace.length > 1000) state.trace.shift();
    });
  }
  close() { this.closed = true; this.ws.close(); }
}

function openSlide(slide) {
  if (state.tiles) state.tiles.close();
  state.tiles = new TileSocket(slide, state.viewer);
  state.slide = slide;
  for (const el of state.overlays.values()) state.viewer.removeOverlay(el);
  state.overlays.clear();
  state.dzMax = null;
  // Deep Zoom levels between two magnification levels are all read from the deeper one, so
  // OpenSeadragon's blurry-to-sharp fallback through them would make the server generate far
  // more of the deep level than is on screen; skip to levels a magnification step coarser.
  let ratio = 1;
  for (let i = 1; i < slide.levels.length; i++) {
    ratio = Math.max(ratio, slide.levels[i - 1].downsample / slide.levels[i].downsample);
  }
  state.viewer.discardLevelsBelowDownsampleRatio = Math.pow(2, Math.ceil(Math.log2(ratio)));
  state.viewer.open(slide.dzi);
  $("seed").value = slide.seed;
  $("slide-info").textContent =
    `seed ${slide.seed} · ${slide.width.toLocaleString()} × ${slide.height.toLocaleString()} px · model ${slide.model}`;
  history.replaceState(null, "", `?seed=${slide.seed}`);
  connectEvents(slide);
  updateReadout();
}

function connectEvents(slide) {
  if (state.events) state.events.close();
  const es = new EventSource(`/api/slides/${slide.id}/events`);
  state.events = es;
  const handle = (ev) => {
    const e = JSON.parse(ev.data);
    if (e.slide !== undefined && String(e.slide) !== String(state.slide.id)) return;
    if (!e.box) { updateQueue(e.queue, e.eta); return; }
    const key = `${e.level}/${e.col}/${e.row}`;
    if (e.type === "queued" || e.type === "started") {
      let el = state.overlays.get(key);
      if (!el) {
        el = document.createElement("div");
        const [x0, y0, x1, y1] = e.box;
        const rect = state.viewer.viewport.imageToViewportRectangle(x0, y0, x1 - x0, y1 - y0);
        state.viewer.addOverlay({ element: el, location: rect });
        state.overlays.set(key, el);
      }
      el.className = `tile-overlay ${e.type}`;
      el.title = `level ${e.level} tile (${e.col}, ${e.row}) ${e.type}`;
    } else {
      const el = state.overlays.get(key);
      if (el) { state.viewer.removeOverlay(el); state.overlays.delete(key); }
      if (e.type === "failed") showMessage(`Tile (${e.col}, ${e.row}) failed: ${e.error || ""}`);
    }
    updateQueue(e.queue, e.eta);
  };
  for (const type of ["hello", "queued", "started", "done", "failed", "dropped"]) {
    es.addEventListener(type, handle);
  }
}

function updateQueue(depth, eta) {
  const busy = depth > 0 || state.overlays.size > 0;
  $("queue-dot").className = busy ? "dot busy" : "dot";
  $("queue-text").textContent = busy
    ? `${depth} queued · ETA ${eta < 60 ? Math.round(eta) + " s" : Math.round(eta / 60) + " min"}`
    : "idle";
}

function niceLength(um) {
  const p = Math.pow(10, Math.floor(Math.log10(um)));
  for (const m of [5, 2, 1]) if (m * p <= um) return m * p;
  return p;
}

function magnificationFor(fullPerScreen) {
  // the lowest magnification level that is at most UPSCALE_BEFORE_NEXT_LEVEL times coarser
  // than the screen (levels are listed from the lowest magnification up)
  for (const l of state.slide.levels) {
    if (l.downsample <= fullPerScreen * UPSCALE_BEFORE_NEXT_LEVEL) return l;
  }
  return state.slide.levels[state.slide.levels.length - 1];
}

function limitDeepZoomLevel(item, level) {
  // Deep Zoom level L (downsample 2^(max-L)) is rendered from the finest magnification level
  // whose downsample is <= 2^(max-L); allow only levels rendered from `level` or coarser.
  if (state.dzMax === null) state.dzMax = item.source.maxLevel;
  const allowed = Math.max(0, state.dzMax - Math.ceil(Math.log2(level.downsample) - 1e-9));
  if (item.source.maxLevel !== allowed) {
    item.source.maxLevel = allowed;
    state.viewer.forceRedraw();
  }
}

function updateReadout() {
  const viewer = state.viewer, slide = state.slide;
  if (!slide || !viewer.world.getItemCount()) return;
  const item = viewer.world.getItemAt(0);
  const zoom = item.viewportToImageZoom(viewer.viewport.getZoom(true)); // screen px per full-res px
  const fullPerScreen = 1 / zoom;
  const level = magnificationFor(fullPerScreen);
  limitDeepZoomLevel(item, level);
  $("level").textContent = String(level.level);
  const umPerScreenPx = slide.mpp * fullPerScreen;
  $("magnification").textContent = `${(10 / umPerScreenPx).toFixed(umPerScreenPx > 2 ? 1 : 0)}×`;
  const target = niceLength(umPerScreenPx * 140);
  $("scalebar-bar").style.width = `${Math.round(target / umPerScreenPx)}px`;
  $("scalebar-label").textContent = target >= 1000 ? `${target / 1000} mm` : `${target} µm`;
}

async function loadSlides() {
  const params = new URLSearchParams(location.search);
  const wanted = params.get("seed");
  if (wanted !== null && /^\d+$/.test(wanted)) return newSlide(Number(wanted));
  const res = await fetch("/api/slides");
  const slides = await res.json();
  if (slides.length) openSlide(slides[0]);
}

async function newSlide(seed) {
  const button = $("new-slide-button");
  button.disabled = true;
  showMessage("");
  try {
    const res = await fetch("/api/slides", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ seed }),
    });
    if (!res.ok) { showMessage(await res.text()); return; }
    openSlide(await res.json());
  } catch (err) {
    showMessage(`Could not open slide: ${err}`);
  } finally {
    button.disabled = false;
  }
}

function main() {
  state.viewer = createViewer();
  window.lazyslide = state; // for tests and the curious
  // The navigator's image shares the main image's tile source: tell them apart by the tile's
  // image (the navigator's tiles are prefetch, generated after the view's own).
  const useTileSocket = (e) => {
    const source = e.item.source;
    source.downloadTileStart = (context) => state.tiles.get(
      context, !!context.tile && context.tile.tiledImage !== state.viewer.world.getItemAt(0));
    source.downloadTileAbort = (context) => state.tiles.abort(context);
  };
  state.viewer.world.addHandler("add-item", useTileSocket);
  if (state.viewer.navigator) state.viewer.navigator.world.addHandler("add-item", useTileSocket);
  let reviewing = null; // re-rank what to generate as the view moves (at most every 200 ms)
  state.viewer.addHandler("viewport-change", () => {
    if (reviewing === null) reviewing = setTimeout(() => { reviewing = null; state.tiles.dispatch(); }, 200);
  });
  state.viewer.addHandler("animation", updateReadout);
  state.viewer.addHandler("open", updateReadout);
  state.viewer.addHandler("resize", updateReadout);
  state.viewer.addHandler("tile-load-failed", (e) => {
    if (e.message) console.warn("tile failed", e.message);
  });
  $("new-slide").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const seed = Number($("seed").value);
    if (!Number.isInteger(seed) || seed < 0) { showMessage("The seed must be a whole number ≥ 0"); return; }
    newSlide(seed);
  });
  loadSlides().catch((err) => showMessage(`Could not reach the server: ${err}`));
}

main();
