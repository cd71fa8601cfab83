"use strict";
// Polls live/data (with the page's own query string, so an APIM subscription-key travels along)
// and draws, per symbol, closes, the forecast served for each minute and its interval band.
(function () {
  const POLL_MS = 3000;
  const dataUrl = location.pathname.replace(/\/$/, "") + "/data" + location.search;
  const charts = {};

  const fmt = (v, digits) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
  const text = (v) => (v === null || v === undefined || v === "" ? "–" : String(v));

  function cell(row, value, cls) {
    const td = document.createElement("td");
    td.textContent = value;
    if (cls) td.className = cls;
    row.appendChild(td);
  }

  function versions(doc) {
    const body = document.querySelector("#versions tbody");
    body.replaceChildren();
    for (const v of doc.versions) {
      const tr = document.createElement("tr");
      tr.dataset.version = v.version;
      if (v.champion) tr.className = "champion";
      cell(tr, v.version + (v.champion ? " (champion)" : ""), "text");
      cell(tr, text(v.kind), "text");
      cell(tr, text(v.decision), "text");
      cell(tr, fmt(v.decision_ratio, 4));
      cell(tr, fmt(v.live_ratio, 4));
      cell(tr, fmt(v.live_p, 3));
      cell(tr, text(v.live_n));
      cell(tr, v.coverage === null || v.coverage === undefined ? "–" : (100 * v.coverage).toFixed(1) + " %");
      cell(tr, v.serving.join(" "), "text");
      body.appendChild(tr);
    }
  }

  function health(doc) {
    const champion = doc.champion || Object.values(doc.serving)[0] || "";
    const el = document.getElementById("champion");
    el.textContent = champion ? "v" + champion : "–";
    el.dataset.version = champion;
    const lag = doc.ingest.lag_s;
    document.getElementById("lag").textContent = lag === null ? "no raw/ blob lately" : lag.toFixed(0) + " s";
    document.getElementById("deadletters").textContent = String(doc.ingest.deadletters_last_hour);
    document.getElementById("live-updated").textContent = text(doc.live_updated_at);
  }

  // vertical lines where the forecasting version changed
  function changesPlugin(getChanges) {
    return {
      hooks: {
        draw: (u) => {
          const ctx = u.ctx;
          ctx.save();
          ctx.strokeStyle = "#c60";
          ctx.setLineDash([4, 4]);
          for (const c of getChanges()) {
            const x = Math.round(u.valToPos(c.ts, "x", true));
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
          }
          ctx.restore();
        },
      },
    };
  }

  function chart(symbol, s) {
    let entry = charts[symbol];
    const data = [s.x, s.close, s.forecast, s.low, s.high];
    if (!entry) {
      const box = document.createElement("div");
      box.className = "chart";
      box.dataset.symbol = symbol;
      box.innerHTML = "<h3></h3><div class='plot'></div><div class='changes'></div>";
      document.getElementById("charts").appendChild(box);
      entry = { box, changes: [] };
      const opts = {
        width: Math.min(1100, window.innerWidth - 60),
        height: 300,
        series: [
          {},
          { label: "close", stroke: "#222", width: 1.5, spanGaps: true },
          { label: "forecast", stroke: "#1764d1", width: 1.5, dash: [5, 3], points: { show: true, size: 4 } },
          { label: "low", stroke: "rgba(23,100,209,0.3)", width: 1, points: { show: false } },
          { label: "high", stroke: "rgba(23,100,209,0.3)", width: 1, points: { show: false } },
        ],
        bands: [{ series: [4, 3], fill: "rgba(23,100,209,0.15)" }],
        plugins: [changesPlugin(() => entry.changes)],
      };
      entry.plot = new uPlot(opts, data, box.querySelector(".plot"));
      charts[symbol] = entry;
    } else {
      entry.plot.setData(data);
    }
    entry.changes = s.changes;
    const band = s.low.filter((v, i) => v !== null && s.high[i] !== null).length;
    Object.assign(entry.box.dataset, {
      points: String(s.x.length),
      closes: String(s.close.filter((v) => v !== null).length),
      forecasts: String(s.forecast.filter((v) => v !== null).length),
      band: String(band),
      lastTs: String(s.last_ts),
      lastClose: String(s.last_close),
      changes: String(s.changes.length),
    });
    entry.box.querySelector("h3").textContent =
      symbol + "  last close " + fmt(s.last_close, 2) + " at " + (s.last_ts ? new Date(s.last_ts * 1000).toISOString() : "–");
    entry.box.querySelector(".changes").textContent = s.changes.length
      ? "version changes: " + s.changes.map((c) => new Date(c.ts * 1000).toISOString().slice(11, 16) + " v" + c.from + "→v" + c.to).join(", ")
      : "";
    entry.plot.redraw(false);
  }

  async function poll() {
    const status = document.getElementById("status");
    try {
      const response = await fetch(dataUrl, { cache: "no-store" });
      if (!response.ok) throw new Error("live/data answered " + response.status);
      const doc = await response.json();
      health(doc);
      versions(doc);
      for (const [symbol, s] of Object.entries(doc.symbols)) chart(symbol, s);
      status.textContent = "updated " + doc.now;
      status.dataset.state = "ok";
      document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
    } catch (err) {
      status.textContent = "not updated: " + err.message;
      status.dataset.state = "error";
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  poll();
})();
