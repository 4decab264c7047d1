-- POST /api/orders for customer WRKB_CUSTOMER.
--   WRKB_PRODUCT set: every order is 1 unit of that one product (the hot-product race).
--   otherwise: 1 to WRKB_MAX_LINES lines (distinct products drawn at random from
--   WRKB_IDS_FILE), 1 unit each.
dofile(os.getenv("WRKB_LUA_DIR") .. "/common.lua")

local customer, hot, ids, max_lines

function scenario_init()
    customer = assert(tonumber(env("WRKB_CUSTOMER")), "WRKB_CUSTOMER is required")
    hot = tonumber(env("WRKB_PRODUCT", nil))
    max_lines = tonumber(env("WRKB_MAX_LINES", "3"))
    if not hot then ids = load_ids(env("WRKB_IDS_FILE")) end
end

local function lines()
    if hot then
        return string.format('{"id":%d,"quantity":1}', hot)
    end
    local count = math.random(1, math.min(max_lines, #ids))
    local chosen, parts = {}, {}
    while #parts < count do
        local id = ids[math.random(#ids)]
        if not chosen[id] then
            chosen[id] = true
            parts[#parts + 1] = string.format('{"id":%d,"quantity":1}', id)
        end
    end
    return table.concat(parts, ",")
end

function make_request()
    local body = string.format('{"customer_id":%d,"products":[%s]}', customer, lines())
    return wrk.format("POST", "/api/orders", JSON_HEADERS, body)
end
