-- GET /api/products/<id>, each id drawn at random from WRKB_IDS_FILE (ids that exist).
dofile(os.getenv("WRKB_LUA_DIR") .. "/common.lua")

local ids

function scenario_init()
    ids = load_ids(env("WRKB_IDS_FILE"))
end

function make_request()
    return wrk.format("GET", "/api/products/" .. ids[math.random(#ids)])
end
