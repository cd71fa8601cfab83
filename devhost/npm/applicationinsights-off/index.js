"use strict";
// Azurite requires applicationinsights when it loads, but with --disableTelemetry (devhost always
// passes it) never calls it. The real package brings OpenTelemetry: 42,000 of the 55,000 files npm
// ci writes, and 1.1 s of CPU on every Azurite start. Any call means telemetry was switched on.
function off() {
  throw new Error("Azurite telemetry is off in Stockcast: run Azurite with --disableTelemetry");
}

module.exports = { setup: off, start: off, TelemetryClient: off, defaultClient: undefined };
