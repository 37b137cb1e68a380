-- agent-image then boot-and-run --image with small steps, on the local provider
-- (the spec itself: recipes/agent_image_flow.lua).
require("recipes.agent_image_flow").define("local")
