-- POST /api/customers with an email unique to each request: run tag (WRKB_TAG, random
-- per run) + wrk thread id + a per-thread counter + a random suffix.
dofile(os.getenv("WRKB_LUA_DIR") .. "/common.lua")

local tag, counter, salt

function scenario_init()
    tag = env("WRKB_TAG", "x")
    counter = 0
    salt = string.format("%04x", math.random(0, 0xffff))
end

function make_request()
    counter = counter + 1
    local local_part = string.format("bench.%s.t%d%s.%d", tag, tid, salt, counter)
    local body = string.format(
        '{"name":"bench %s %d-%d","email":"%s@example.com"}', tag, tid, counter, local_part
    )
    return wrk.format("POST", "/api/customers", JSON_HEADERS, body)
end
