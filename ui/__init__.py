"""The ranking app: annotators rank sampled answers in the browser."""

import os

# Private by default. Gradio reads this whenever a Blocks is made (analytics and its version
# check), huggingface_hub when it is imported (telemetry); both come in with gradio, after this.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
