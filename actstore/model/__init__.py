"""Hugging Face models: loading them (or their skeleton, on the meta device), resolving hook
names (a module's output, or with `:input` what it receives), and forward hooks that read
(`capture.Capture`, stopping after the last hook), record, replace or add to those
activations (`hooks`). Shared by generation, evaluation and steering.

    capture.load_config / skeleton ──▶ resolve_hooks (unknown hook: one line) ──▶ Capture
    capture.load_model ──▶ hooks.replaced (loss recovered), hooks.added (steering)
    device.resolve_device: `auto` → cuda when one is visible, else cpu
"""
