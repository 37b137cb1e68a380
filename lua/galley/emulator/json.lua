--- galley.emulator.json: kept for compatibility; the module is galley.json.
return require("galley.json")
