// The API, with the signed-in key. The key lives in this tab's sessionStorage and goes in the
// X-API-Key header of every request: never in a URL (it would land in logs and history).

const STORAGE = "headwater.key";

export function storedKey() {
  return sessionStorage.getItem(STORAGE);
}

export function keepKey(key) {
  sessionStorage.setItem(STORAGE, key);
}

export function forgetKey() {
  sessionStorage.removeItem(STORAGE);
}

export class ApiError extends Error {
  constructor(status, body, text) {
    super((body && body.error) || text || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

function headers(extra = {}) {
  const key = storedKey();
  return { Accept: "application/json", ...(key ? { "X-API-Key": key } : {}), ...extra };
}

/** A JSON request; resolves with the parsed body, rejects with an ApiError for a non-2xx answer. */
export async function api(path, { method = "GET", body, signal } = {}) {
  const response = await fetch(path, {
    method,
    headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    credentials: "omit",
    cache: "no-store",
  });
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  if (!response.ok) throw new ApiError(response.status, parsed, text);
  return parsed;
}

/** A query string of the non-empty values. */
export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(name, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/**
 * Reads a server-sent event stream with fetch (EventSource cannot send the key header).
 * Calls `onOpen()` on the server's `: connected` comment and `onEvent({id, event, data})` per
 * event; resolves when the stream ends, rejects with an ApiError or the abort.
 */
export async function readStream(path, { lastEventId, signal, onOpen, onEvent }) {
  const extra = { Accept: "text/event-stream" };
  if (lastEventId) extra["Last-Event-ID"] = lastEventId;
  const response = await fetch(path, { headers: headers(extra), signal, credentials: "omit", cache: "no-store" });
  if (!response.ok) {
    const text = await response.text();
    let parsed = null;
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = null;
    }
    throw new ApiError(response.status, parsed, text);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      dispatch(block, onOpen, onEvent);
    }
  }
}

function dispatch(block, onOpen, onEvent) {
  const message = { id: null, event: "message", data: [] };
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) {
      if (line.slice(1).trim() === "connected") onOpen();
      continue;
    }
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "id") message.id = value;
    else if (field === "event") message.event = value;
    else if (field === "data") message.data.push(value);
  }
  if (message.data.length) onEvent({ id: message.id, event: message.event, data: message.data.join("\n") });
}
