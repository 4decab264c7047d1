-- GET of one fixed path (WRKB_PATH): the ceiling (/api/ping or /health) and the
-- products list (/api/products, first page).
dofile(os.getenv("WRKB_LUA_DIR") .. "/common.lua")

local req

function scenario_init()
    req = wrk.format("GET", env("WRKB_PATH", "/health"))
end

function make_request()
    return req
end
