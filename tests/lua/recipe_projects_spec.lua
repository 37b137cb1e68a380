-- Recipes as projects (issue #20): a recipe requires files beside it, its option spec is checked,
-- option values parse strictly, and recipe.exit(0) inside a step is not a failure.
local support = require("support")
local q = support.q
local recipes = require("support.recipes")

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

local function run_recipe(text, args)
  local path = support.script(text)
  local code, out, err = support.galley("run " .. q(path) .. " " .. (args or ""))
  os.remove(path)
  return code, out, err
end

describe("recipes as projects #recipe", function()
  local dir
  before_each(function() dir = recipes.mktemp_dir("project") end)
  after_each(function() os.execute("rm -rf " .. q(dir)) end)

  it("finds a module beside the recipe under galley run and galley SCRIPT.lua, from any directory", function()
    os.execute("mkdir -p " .. q(dir .. "/lib/parts"))
    write(dir .. "/helper.lua", "return { greet = function(n) return 'hello ' .. n end }\n")
    write(dir .. "/lib/parts/init.lua", "return { answer = 42 }\n")
    write(dir .. "/main.lua", "local h = require('helper')\nprint(h.greet('world'), require('lib.parts').answer)\n")
    local code, out, err = support.galley("run " .. q(dir .. "/main.lua"), nil, nil, "/")
    assert.are.equal(0, code, err)
    assert.are.equal("hello world\t42\n", out)
    code, out, err = support.galley(q(dir .. "/main.lua"), nil, nil, "/")
    assert.are.equal(0, code, err)
    assert.are.equal("hello world\t42\n", out)
  end)

  it("never lets a file beside the recipe shadow a galley module", function()
    os.execute("mkdir -p " .. q(dir .. "/galley"))
    write(dir .. "/galley/recipe.lua", "error('shadowed')\n")
    write(dir .. "/main.lua", "print(type(require('galley.recipe').parallel))\n")
    local code, out, err = support.galley("run " .. q(dir .. "/main.lua"))
    assert.are.equal(0, code, err)
    assert.are.equal("function\n", out)
  end)
end)

describe("recipe.options checks its spec #recipe", function()
  local function spec_error(options_src)
    local code, _, err = run_recipe(("require('galley.recipe').options({ name = 'x', options = %s }, arg)")
      :format(options_src))
    return code, err
  end

  for label, src in pairs({
    ["an unknown type"] = '{ { "debug", type = "bool" } }',
    ["a default of the wrong type"] = '{ { "count", type = "integer", default = "2" } }',
    ["a default outside the choices"] = '{ { "mode", choices = { "a", "b" }, default = "c" } }',
    ["a repeated name"] = '{ { "x" }, { "x" } }',
    ["an option named help"] = '{ { "help", type = "flag" } }',
  }) do
    it("refuses " .. label .. " (VALIDATION_ERROR naming the option) #failure", function()
      local code, err = spec_error(src)
      assert.are.equal(1, code)
      assert.is_truthy(err:find("VALIDATION_ERROR", 1, true), err)
      assert.is_truthy(err:find("options[", 1, true), err)
    end)
  end
end)

describe("recipe option values #recipe", function()
  local header = [[
local recipe = require("galley.recipe")
local opts = recipe.options({ name = "d", usage = "[FILE]", options = {
  { "count", type = "integer", default = 2 }, { "ratio", type = "number", default = 0.5 } } }, arg)
print(opts.count, opts.ratio, opts[1])
]]

  it("parses decimal integers and numbers only #failure", function()
    for _, bad in ipairs({ "--count 0x10", "--count 1e1", "--count ' 7'", "--ratio 0x1p4", "--ratio inf" }) do
      local code, _, err = run_recipe(header, bad)
      assert.are.equal(2, code, bad .. ": " .. err)
      assert.is_truthy(err:find("RECIPE_USAGE", 1, true), err)
    end
    local code, out, err = run_recipe(header, "--count -3 --ratio 2.25 file.txt")
    assert.are.equal(0, code, err)
    assert.are.equal("-3\t2.25\tfile.txt\n", out)
  end)

  it("treats -c 2 as an unknown option, not the FILE argument #failure", function()
    local code, out, err = run_recipe(header, "-c 2")
    assert.are.equal(2, code)
    assert.are.equal("", out)
    assert.is_truthy(err:find("RECIPE_USAGE", 1, true), err)
    assert.is_truthy(err:find("--count", 1, true), err) -- the hint names what was probably meant
  end)

  it("shows recipe.exit(0) inside a step as a success, not FAILED", function()
    local code, _, err = run_recipe([[
local recipe = require("galley.recipe")
recipe.step("early", function() recipe.exit(0) end)
]])
    assert.are.equal(0, code, err)
    assert.is_falsy(err:find("FAILED", 1, true), err)
    assert.is_truthy(err:find("ok early", 1, true), err)
  end)
end)
