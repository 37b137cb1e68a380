--- galley.dashboard.ansi: terminal text with SGR escapes (tmux `capture-pane -e`) to HTML.
-- Colours (16, 256 and 24-bit), bold, dim, italic, underline and inverse become <span style>;
-- every other escape sequence is dropped; text is HTML-escaped. Redaction is the caller's job
-- (redact the raw text first: escape sequences hold no word characters a secret could hide in).
local M = {}

local BASE16 = {
  "#000000", "#cd3131", "#0dbc79", "#e5e510", "#2472c8", "#bc3fbc", "#11a8cd", "#e5e5e5",
  "#666666", "#f14c4c", "#23d18b", "#f5f543", "#3b8eea", "#d670d6", "#29b8db", "#ffffff",
}

local ESCAPES = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#39;" }

--- HTML-escapes text.
---@param s string
---@return string
function M.escape(s)
  return (s:gsub("[&<>\"']", ESCAPES))
end


--- The colour of 256-colour index n as #rrggbb.
---@param n integer
---@return string|nil
function M.color256(n)
  if n < 0 or n > 255 then return nil end
  if n < 16 then return BASE16[n + 1] end
  if n >= 232 then
    local v = 8 + (n - 232) * 10
    return ("#%02x%02x%02x"):format(v, v, v)
  end
  n = n - 16
  local function c(x) return x == 0 and 0 or 55 + x * 40 end
  return ("#%02x%02x%02x"):format(c(n // 36), c((n // 6) % 6), c(n % 6))
end


local function apply(st, params)
  local p = {}
  for v in (params == "" and "0" or params):gmatch("[^;:]*") do p[#p + 1] = tonumber(v) or 0 end
  local i = 1
  while i <= #p do
    local v = p[i]
    if v == 0 then
      st.fg, st.bg, st.bold, st.dim, st.italic, st.under, st.inverse = nil, nil, false, false, false, false, false
    elseif v == 1 then st.bold = true
    elseif v == 2 then st.dim = true
    elseif v == 3 then st.italic = true
    elseif v == 4 then st.under = true
    elseif v == 7 then st.inverse = true
    elseif v == 22 then st.bold, st.dim = false, false
    elseif v == 23 then st.italic = false
    elseif v == 24 then st.under = false
    elseif v == 27 then st.inverse = false
    elseif v >= 30 and v <= 37 then st.fg = BASE16[v - 29]
    elseif v == 39 then st.fg = nil
    elseif v >= 40 and v <= 47 then st.bg = BASE16[v - 39]
    elseif v == 49 then st.bg = nil
    elseif v >= 90 and v <= 97 then st.fg = BASE16[v - 81]
    elseif v >= 100 and v <= 107 then st.bg = BASE16[v - 91]
    elseif (v == 38 or v == 48) and p[i + 1] == 5 then
      local c = M.color256(p[i + 2] or -1)
      if v == 38 then st.fg = c else st.bg = c end
      i = i + 2
    elseif (v == 38 or v == 48) and p[i + 1] == 2 then
      local r, g, b = p[i + 2] or 0, p[i + 3] or 0, p[i + 4] or 0
      local c = ("#%02x%02x%02x"):format(math.min(r, 255), math.min(g, 255), math.min(b, 255))
      if v == 38 then st.fg = c else st.bg = c end
      i = i + 4
    end
    i = i + 1
  end
end


local function style(st)
  local fg, bg = st.fg, st.bg
  if st.inverse then fg, bg = bg or "var(--term-bg)", fg or "var(--term-fg)" end
  local parts = {}
  if fg then parts[#parts + 1] = "color:" .. fg end
  if bg then parts[#parts + 1] = "background:" .. bg end
  if st.bold then parts[#parts + 1] = "font-weight:bold" end
  if st.dim then parts[#parts + 1] = "opacity:.7" end
  if st.italic then parts[#parts + 1] = "font-style:italic" end
  if st.under then parts[#parts + 1] = "text-decoration:underline" end
  return table.concat(parts, ";")
end


--- Converts terminal text to HTML (for a <pre>).
---@param text string
---@return string html
function M.to_html(text)
  local out, st = {}, {}
  local open = false
  local function emit(s)
    if s == "" then return end
    out[#out + 1] = M.escape(s)
  end
  local i, n = 1, #text
  while i <= n do
    local e = text:find("\27", i, true)
    emit(text:sub(i, (e or n + 1) - 1))
    if not e then break end
    local params, final, after = text:match("^%[([%d;:?]*)([@-~])()", e + 1)
    if final then
      if final == "m" and not params:find("?", 1, true) then
        apply(st, params)
        if open then out[#out + 1] = "</span>" end
        local s = style(st)
        open = s ~= ""
        if open then out[#out + 1] = '<span style="' .. s .. '">' end
      end
      i = after
    else
      local osc_end = text:match("^%][^\7\27]*\7()", e + 1) or text:match("^%][^\27]*\27\\()", e + 1)
      i = osc_end or (e + 2) -- OSC dropped; a lone ESC and the next byte dropped
    end
  end
  if open then out[#out + 1] = "</span>" end
  return table.concat(out)
end


return M
