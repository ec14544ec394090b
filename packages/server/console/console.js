// The operator console: signs in with the admin key, reads GET /admin/events
// (server-sent events, read with fetch so that the key goes in a header,
// never in a URL), and draws upstream cards, charts, keys and the request
// tail. Buttons call the admin API. Everything shown from the server is set
// as text (never as HTML), so a model or key name cannot inject markup.
;(function () {
  "use strict"
  const Charts = window.BreakwaterCharts
  const $ = (id) => document.getElementById(id)
  const STORAGE = "breakwater.adminKey"

  let key = null
  let controller = null
  let reconnect = null
  let points = []
  let current = null
  let snapshot = null
  const transitions = new Map()
  const tail = []
  const TAIL_MAX = 500
  const seen = { key: new Set(), model: new Set(), upstream: new Set() }

  // ----- sign in / out -------------------------------------------------------

  const setStatus = (text, cls) => {
    const s = $("status")
    s.textContent = text
    s.className = `status ${cls || ""}`
  }

  const showError = (text) => {
    const e = $("signin-error")
    e.textContent = text
    e.hidden = false
  }

  const signedOut = (error) => {
    key = null
    sessionStorage.removeItem(STORAGE)
    if (controller) controller.abort()
    controller = null
    clearTimeout(reconnect)
    $("app").hidden = true
    $("signin").hidden = false
    $("signout").hidden = true
    // No data stays on the page once signed out.
    $("cards").textContent = ""
    cards.clear()
    $("charts").textContent = ""
    $("keys").tBodies[0].textContent = ""
    $("tail").tBodies[0].textContent = ""
    points = []
    current = null
    snapshot = null
    tail.length = 0
    setStatus(error ? "refused" : "signed out", error ? "error" : "")
    if (error) showError(error)
  }

  const signIn = (k) => {
    key = k
    $("signin-error").hidden = true
    connect()
  }

  $("signin-form").addEventListener("submit", (ev) => {
    ev.preventDefault()
    const input = $("admin-key")
    const k = input.value.trim()
    input.value = ""
    if (k !== "") signIn(k)
  })
  $("signout").addEventListener("click", () => signedOut(null))

  // ----- the event stream ----------------------------------------------------

  const connect = async () => {
    if (key === null) return
    if (controller) controller.abort()
    controller = new AbortController()
    const mine = controller
    setStatus("connecting…", "")
    let res
    try {
      res = await fetch("/admin/events", { headers: { authorization: `Bearer ${key}` }, signal: mine.signal, cache: "no-store" })
    } catch (e) {
      if (!mine.signal.aborted) retry("gateway unreachable")
      return
    }
    if (res.status === 401 || res.status === 403) {
      let message = `The admin key was refused (${res.status}).`
      try {
        const body = await res.json()
        if (body && body.error && body.error.message) message = `The admin key was refused (${res.status}): ${body.error.message}`
      } catch (_) {}
      signedOut(message)
      return
    }
    if (!res.ok || !res.body) {
      retry(`HTTP ${res.status}`)
      return
    }
    sessionStorage.setItem(STORAGE, key)
    $("signin").hidden = true
    $("app").hidden = false
    $("signout").hidden = false
    setStatus("live", "live")
    const reader = res.body.getReader()
    const decoder = new TextDecoder()
    let buffer = ""
    try {
      for (;;) {
        const { done, value } = await reader.read()
        if (done) break
        buffer += decoder.decode(value, { stream: true })
        let end
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end)
          buffer = buffer.slice(end + 2)
          dispatch(block)
        }
      }
    } catch (_) {}
    if (!mine.signal.aborted && key !== null) retry("disconnected")
  }

  const retry = (why) => {
    setStatus(`${why}; reconnecting`, "error")
    clearTimeout(reconnect)
    reconnect = setTimeout(connect, 2000)
  }

  const dispatch = (block) => {
    let event = "message"
    let data = ""
    for (const line of block.split("\n")) {
      if (line.startsWith("event: ")) event = line.slice(7)
      else if (line.startsWith("data: ")) data += line.slice(6)
    }
    if (data === "") return
    const d = JSON.parse(data)
    switch (event) {
      case "hello":
        points = d.points.slice()
        for (const t of d.transitions) transitions.set(t.breaker, t)
        tail.length = 0
        for (const r of d.tail) addRequest(r, false)
        renderTail()
        break
      case "snapshot":
        snapshot = d
        current = d.current
        renderCards()
        renderKeys()
        renderCharts()
        $("tail-note").textContent = d.tailSkipped > 0 ? `(sampled: ${d.tailSkipped} not shown)` : ""
        break
      case "point":
        points.push(d)
        if (points.length > 180) points.shift()
        current = null
        renderCharts()
        break
      case "breaker":
        transitions.set(d.breaker, d)
        break
      case "request":
        addRequest(d, true)
        break
      case "dropped":
        retry("too slow")
        break
    }
  }

  // ----- upstream cards --------------------------------------------------------

  const time = (t) => new Date(t).toLocaleTimeString([], { hour12: false })
  const secs = (ms) => `${Math.max(0, Math.ceil(ms / 1000))}s`

  const COOLDOWN_WHY = {
    "rate-limited": (u) => `429${u.cooldownSeconds !== null ? ` Retry-After ${u.cooldownSeconds}s` : " rate limited"}`,
    "quota-exhausted": () => "quota exhausted",
    "low-headroom": () => "rate-limit headroom low",
    "auth-failed": () => "the upstream refused its API key"
  }

  /** What a person needs to know about the state, in words. */
  const reasonOf = (u, now) => {
    if (u.cooldownUntil !== null) {
      const why = (COOLDOWN_WHY[u.cooldownReason] || (() => u.cooldownReason))(u)
      const verb = u.state === "exhausted" ? "exhausted" : u.state === "auth-failed" ? "auth failed" : "cooling down"
      return `${verb} until ${time(u.cooldownUntil)} — ${why}`
    }
    if (u.breaker === "ForcedOpen") return "open — forced open by an operator"
    if (u.breaker === "Open") {
      const why = u.breakerReason === "probe failed" ? "a half-open trial call failed" : u.breakerReason || `${u.consecutiveFailures} consecutive failures`
      const probe = u.openUntil === null ? "" : u.openUntil > now ? `, probe in ${secs(u.openUntil - now)}` : ", probe due"
      return `open — ${why}${probe}`
    }
    if (u.breaker === "HalfOpen") return `recovering — half-open, trial calls admitted${u.breakerReason ? ` (${u.breakerReason})` : ""}`
    if (u.breaker === "Disabled") return "breaker disabled by an operator"
    if (u.state === "degraded") return "degraded — health probes failing"
    return "healthy"
  }

  const el = (tag, cls, text) => {
    const e = document.createElement(tag)
    if (cls) e.className = cls
    if (text !== undefined) e.textContent = text
    return e
  }

  const figure = (label, value) => {
    const d = el("div")
    d.append(`${label} `, el("b", "", value))
    return d
  }

  const ms = (v) => (v === null ? "–" : `${Math.round(v)} ms`)

  const action = async (name, what) => {
    const label = what === "reset" ? "Reset (close the breaker and clear its cooldown)" : "Force open (refuse every call until reset)"
    if (!window.confirm(`${label}: upstream '${name}'?`)) return
    try {
      const res = await fetch(`/admin/upstreams/${encodeURIComponent(name)}/${what}`, {
        method: "POST",
        headers: { authorization: `Bearer ${key}` }
      })
      if (res.status === 401) return signedOut("The admin key was refused (401).")
      if (!res.ok) window.alert(`${what} failed: HTTP ${res.status}`)
    } catch (e) {
      window.alert(`${what} failed: ${e}`)
    }
  }

  /** Cards are built once per upstream and updated in place, so a click is never lost to a redraw. */
  const cards = new Map()

  const makeCard = (name) => {
    const card = el("div", "card")
    card.dataset.upstream = name
    const h = el("h3", "", name)
    const badge = el("span", "badge")
    h.append(badge)
    const reason = el("div", "reason")
    const figures = el("div", "figures")
    const actions = el("div", "actions")
    const reset = el("button", "reset", "Reset")
    reset.type = "button"
    reset.addEventListener("click", () => action(name, "reset"))
    const open = el("button", "open", "Force open")
    open.type = "button"
    open.addEventListener("click", () => action(name, "open"))
    actions.append(reset, open)
    card.append(h, reason, figures, actions)
    return { card, badge, reason, figures }
  }

  const renderCards = () => {
    if (!snapshot) return
    const now = snapshot.at
    const box = $("cards")
    const names = new Set()
    for (const u of snapshot.upstreams) {
      names.add(u.name)
      let c = cards.get(u.name)
      if (c === undefined) {
        c = makeCard(u.name)
        cards.set(u.name, c)
      }
      c.card.className = `card state-${u.state}`
      c.card.dataset.state = u.state
      c.badge.textContent = u.state
      c.reason.textContent = reasonOf(u, now)
      c.figures.replaceChildren(
        figure("in flight", `${u.inFlight} / ${u.maxConcurrent}`),
        figure("share", `${Math.round(u.share * 100)}%`),
        figure("latency (EWMA)", ms(u.latencyEwmaMs)),
        figure("probe", u.lastProbeOk === false ? "failing" : ms(u.probeLatencyMs)),
        figure("calls / min", String(u.requestsLastMinute)),
        figure("failures / min", String(u.failuresLastMinute))
      )
      if (c.card.parentNode !== box) box.append(c.card)
      seen.upstream.add(u.name)
    }
    // Upstreams a reload removed.
    for (const [name, c] of cards) {
      if (!names.has(name)) {
        c.card.remove()
        cards.delete(name)
      }
    }
    fillFilter("f-upstream", seen.upstream)
  }

  // ----- charts ------------------------------------------------------------------

  const renderCharts = () => {
    const all = current ? points.concat([current]) : points
    const xs = all.map((p) => p.t)
    const upstreams = []
    for (const p of all) for (const n of Object.keys(p.rps)) if (!upstreams.includes(n)) upstreams.push(n)
    const pct = (v) => `${Math.round(v * 100)}%`
    const usd = (v) => `$${v < 0.01 && v > 0 ? v.toPrecision(1) : Charts.fmt(v)}`
    const specs = [
      {
        title: "Requests/s by upstream",
        stacked: true,
        series: upstreams.map((n) => ({
          name: n === "none" ? "no upstream (refused, failed)" : n === "cache" ? "cache hits" : n,
          values: all.map((p) => p.rps[n] || 0)
        }))
      },
      {
        title: "Errors/s: client-visible vs upstream (absorbed)",
        series: [
          { name: "client-visible (5xx)", color: "#d92d20", values: all.map((p) => p.clientErrors) },
          { name: "upstream attempt failures", color: "#f79009", dashed: true, values: all.map((p) => p.upstreamErrors) }
        ]
      },
      {
        title: "Latency (ms)",
        series: [
          { name: "p50", color: "#1f6fb2", values: all.map((p) => p.p50) },
          { name: "p99", color: "#8e44ad", values: all.map((p) => p.p99) }
        ]
      },
      {
        title: "Cache hit rate",
        yMax: 1,
        yFormat: pct,
        series: [{ name: "hits / lookups", color: "#16a085", values: all.map((p) => p.cacheHitRate) }]
      },
      {
        title: "Cost per minute (USD)",
        yFormat: usd,
        series: [{ name: "all keys", color: "#2c3e50", values: all.map((p) => p.costPerMinute) }]
      }
    ]
    const box = $("charts")
    box.textContent = ""
    for (const spec of specs) {
      const div = el("div", "chart-box")
      // The SVG is built by charts.js, which escapes every name it draws.
      div.innerHTML = Charts.chart({ ...spec, xs, width: 620, height: 240 })
      box.append(div)
    }
  }

  // ----- keys --------------------------------------------------------------------

  const money = (v) => (v === null ? "–" : `$${v.toFixed(v < 1 ? 4 : 2)}`)

  const renderKeys = () => {
    const body = $("keys").tBodies[0]
    body.textContent = ""
    for (const k of snapshot.keys) {
      const tr = el("tr")
      tr.dataset.key = k.name
      const limits = [k.requestsPerMinute !== null ? `${k.requestsPerMinute} req/min` : null, k.tokensPerMinute !== null ? `${k.tokensPerMinute} tok/min` : null]
        .filter((x) => x !== null).join(", ") || "none"
      const over = k.remainingUsd !== null && k.remainingUsd <= 0
      tr.append(
        el("td", "", k.name),
        el("td", "num", money(k.spentUsd)),
        el("td", "num", money(k.budgetUsd)),
        el("td", `num${over ? " over" : ""}`, money(k.remainingUsd)),
        el("td", "", k.budgetPeriod),
        el("td", "", k.resetsAt === null ? "–" : new Date(k.resetsAt).toLocaleString()),
        el("td", "", limits),
        el("td", `num${k.limitsHit > 0 ? " over" : ""}`, String(k.limitsHit))
      )
      body.append(tr)
      seen.key.add(k.name)
    }
    fillFilter("f-key", seen.key)
  }

  // ----- the request tail ----------------------------------------------------------

  const fillFilter = (id, values) => {
    const select = $(id)
    const have = new Set([...select.options].map((o) => o.value))
    for (const v of values) {
      if (have.has(v)) continue
      const o = el("option", "", v)
      o.value = v
      select.append(o)
    }
  }

  const statusClass = (s) => (s >= 500 || s === 499 ? "s-5xx" : s >= 400 ? "s-4xx" : "s-2xx")

  const matches = (r) => {
    const k = $("f-key").value
    const m = $("f-model").value
    const u = $("f-upstream").value
    const s = $("f-status").value
    if (k !== "" && r.key !== k) return false
    if (m !== "" && r.model !== m) return false
    if (u !== "" && r.upstream !== u) return false
    if (s === "2xx" && !(r.status >= 200 && r.status < 300)) return false
    if (s === "4xx" && !(r.status >= 400 && r.status < 500)) return false
    if (s === "5xx" && !(r.status >= 500)) return false
    if ((s === "429" || s === "499") && r.status !== Number(s)) return false
    return true
  }

  const row = (r) => {
    const tr = el("tr")
    tr.append(
      el("td", "", time(r.at)),
      el("td", "", r.key),
      el("td", "", r.model === null ? "–" : r.model),
      el("td", "", r.upstream === null ? "–" : r.cache === "hit" ? `${r.upstream} (cached)` : r.upstream),
      el("td", "num", String(r.attempts)),
      el("td", `num ${statusClass(r.status)}`, String(r.status)),
      el("td", "num", `${Math.round(r.latencyMs)} ms`),
      el("td", "num", `$${r.costUsd.toFixed(6)}`),
      el("td", "", r.cache === null ? "–" : r.cache)
    )
    return tr
  }

  const addRequest = (r, live) => {
    tail.unshift(r)
    if (tail.length > TAIL_MAX) tail.pop()
    if (r.model !== null && !seen.model.has(r.model) && seen.model.size < 200) {
      seen.model.add(r.model)
      fillFilter("f-model", seen.model)
    }
    if (r.upstream !== null) seen.upstream.add(r.upstream)
    seen.key.add(r.key)
    if (live && matches(r)) $("tail").tBodies[0].prepend(row(r))
    const body = $("tail").tBodies[0]
    while (body.rows.length > 200) body.deleteRow(-1)
  }

  const renderTail = () => {
    const body = $("tail").tBodies[0]
    body.textContent = ""
    for (const r of tail) {
      if (body.rows.length >= 200) break
      if (matches(r)) body.append(row(r))
    }
    fillFilter("f-key", seen.key)
    fillFilter("f-upstream", seen.upstream)
  }

  for (const id of ["f-key", "f-model", "f-upstream", "f-status"]) $(id).addEventListener("change", renderTail)

  // ----- start -----------------------------------------------------------------------

  const stored = sessionStorage.getItem(STORAGE)
  if (stored) signIn(stored)
})()
