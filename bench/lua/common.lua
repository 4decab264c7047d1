-- Shared by every wrk scenario script of `make bench` (bench/wrk.py drives wrk).
--
-- A scenario script defines make_request() (and optionally scenario_init()), then loads
-- this file. Configuration comes from the environment set by bench/wrk.py:
--   WRKB_LUA_DIR   this folder              WRKB_PORTS     "8000,8001,8002"
--   WRKB_DURATION  seconds of load          WRKB_MARK_DIR  a folder for "thread done" marks
--   WRKB_HOST      always 127.0.0.1         WRKB_TAG       a random tag of this run
--   WRKB_CONNECTIONS_PER_THREAD  wrk's connections // threads
--
-- Spreading: setup() gives each wrk thread one gateway port, round-robin, so with three
-- threads every gateway process gets the same number of connections.
--
-- Draining: after WRKB_DURATION seconds a thread stops sending new requests (request()
-- returns "", which writes nothing) and waits for the answers to the requests it has in
-- flight; when it has them all it marks itself done and stops. bench/wrk.py stops wrk
-- (SIGINT) once every thread is done. So no request is abandoned half-way: every request
-- that reached the gateway was answered and counted here, which makes the stock
-- invariant of the hot-product scenario exact, and leaves no load behind for the next
-- scenario. Requests lost to socket errors show up as sent - received ("lost"; after a
-- refused connection it also counts requests that were never written).
--
-- done() prints one line "BENCH_JSON {...}" with the totals, per-status counts and
-- latency percentiles (microseconds), parsed by bench/wrk.py.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } wrkb_timespec;
int clock_gettime(int clk_id, wrkb_timespec *tp);
]]
local timespec = ffi.new("wrkb_timespec")
local CLOCK_MONOTONIC = 1

function now_s()
    ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
    return tonumber(timespec.tv_sec) + tonumber(timespec.tv_nsec) * 1e-9
end

function env(name, default)
    local value = os.getenv(name)
    if value == nil or value == "" then return default end
    return value
end

-- One integer per line; used for product ids.
function load_ids(path)
    local ids = {}
    local file = assert(io.open(path, "r"), "cannot open ids file " .. tostring(path))
    for line in file:lines() do
        local id = tonumber(line)
        if id then ids[#ids + 1] = id end
    end
    file:close()
    assert(#ids > 0, "no ids in " .. path)
    return ids
end

JSON_HEADERS = { ["Content-Type"] = "application/json" }

---------------------------------------------------------------------------------------
-- Main state: one setup() per thread before it starts, done() once at the end.

local threads = {}
local addrs = {}

function setup(thread)
    local ports = {}
    for port in string.gmatch(env("WRKB_PORTS", "8000"), "%d+") do ports[#ports + 1] = port end
    local n = #threads + 1
    local port = ports[(n - 1) % #ports + 1]
    if not addrs[port] then
        addrs[port] = wrk.lookup(env("WRKB_HOST", "127.0.0.1"), port)[1]
    end
    thread.addr = addrs[port]
    thread:set("tid", n)
    thread:set("port", tonumber(port))
    threads[n] = thread
end

local function json_string(s)
    s = string.gsub(tostring(s), '[%c"\\]', function(c)
        return string.format("\\u%04x", string.byte(c))
    end)
    return '"' .. s .. '"'
end

function to_json(value)
    local kind = type(value)
    if kind == "table" then
        local parts = {}
        for k, v in pairs(value) do
            parts[#parts + 1] = json_string(k) .. ":" .. to_json(v)
        end
        return "{" .. table.concat(parts, ",") .. "}"
    elseif kind == "number" then
        if value ~= value or value == math.huge or value == -math.huge then return "null" end
        if value == math.floor(value) and math.abs(value) < 2^53 then
            return string.format("%d", value)
        end
        return string.format("%.6f", value)
    elseif kind == "boolean" then
        return tostring(value)
    elseif kind == "nil" then
        return "null"
    end
    return json_string(value)
end

function done(summary, latency, requests)
    local out = {
        requests = summary.requests,
        duration_us = summary.duration,
        bytes = summary.bytes,
        errors = {
            connect = summary.errors.connect,
            read = summary.errors.read,
            write = summary.errors.write,
            status = summary.errors.status,    -- wrk's own count: status > 399
            timeout = summary.errors.timeout,  -- answers slower than wrk --timeout
        },
        latency_us = {
            min = latency.min,
            mean = latency.mean,
            max = latency.max,
            p50 = latency:percentile(50),
            p90 = latency:percentile(90),
            p95 = latency:percentile(95),
            p99 = latency:percentile(99),
            p999 = latency:percentile(99.9),
        },
        threads = #threads,
        sent = 0, received = 0, non2xx = 0, finished = 0,
        statuses = {}, per_port = {},
    }
    local t0, t_last = nil, nil
    for _, thread in ipairs(threads) do
        -- Only plain values cross from a thread's state: wrk 4.1's thread:get() corrupts
        -- the stack on tables (a segfault), hence one global per status code.
        local port = tostring(thread:get("port"))
        local received = thread:get("received") or 0
        out.sent = out.sent + (thread:get("sent") or 0)
        out.received = out.received + received
        if thread:get("finished") then out.finished = out.finished + 1 end
        for status in string.gmatch(thread:get("codes") or "", "%d+") do
            local count = thread:get("status_" .. status) or 0
            out.statuses[status] = (out.statuses[status] or 0) + count
            local code = tonumber(status)
            if code < 200 or code > 299 then out.non2xx = out.non2xx + count end
        end
        out.per_port[port] = (out.per_port[port] or 0) + received
        local started, last = thread:get("t0"), thread:get("t_last")
        if started and (t0 == nil or started < t0) then t0 = started end
        if last and (t_last == nil or last > t_last) then t_last = last end
    end
    out.lost = out.sent - out.received
    -- From the first thread's start to the last answer: the denominator of req/s.
    out.span_s = (t0 and t_last) and (t_last - t0) or 0
    io.write("BENCH_JSON " .. to_json(out) .. "\n")
    io.flush()
end

---------------------------------------------------------------------------------------
-- Thread states: init(), request(), response().

local cutoff, draining, verify_call

function init(args)
    sent, received, codes, finished = 0, 0, "", false
    idle_calls = 0
    connections = tonumber(env("WRKB_CONNECTIONS_PER_THREAD", "1"))
    t0 = now_s()
    t_last = nil
    cutoff = t0 + tonumber(env("WRKB_DURATION", "10"))
    draining = false
    -- wrk calls request() once in the first thread's state to check the request parses;
    -- that request is never sent, so it is not counted.
    verify_call = (tid == 1)
    math.randomseed(os.time() + (tid or 0) * 7919 + math.floor((t0 % 1) * 1e6))
    for _ = 1, 10 do math.random() end
    if scenario_init then scenario_init() end
end

local function finish()
    if finished then return end
    finished = true
    local dir = env("WRKB_MARK_DIR", nil)
    if dir then
        local mark = io.open(dir .. "/thread-" .. tostring(tid), "w")
        if mark then mark:write("done\n") mark:close() end
    end
    wrk.thread:stop()
end

function request()
    if verify_call then
        verify_call = false
        return make_request()
    end
    if draining or now_s() >= cutoff then
        draining = true
        -- A connection asks for a request when its answer came or when it reconnected
        -- after a socket error (its request lost, or never written): either way it has
        -- nothing in flight any more. Once every connection of this thread has asked,
        -- nothing is left to wait for, even if socket errors made sent > received.
        idle_calls = idle_calls + 1
        if sent == received or idle_calls >= connections then finish() end
        return ""  -- nothing is written: this connection stays idle
    end
    sent = sent + 1
    return make_request()
end

function response(status, headers, body)
    received = received + 1
    t_last = now_s()
    local key = "status_" .. status
    local count = _G[key]
    if count == nil then
        codes = codes .. "," .. status
        count = 0
    end
    _G[key] = count + 1
    if on_response then on_response(status, headers, body) end
    if draining and sent == received then finish() end
end
