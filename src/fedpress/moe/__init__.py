"""MoE inference with compressed, offloaded experts, and the error-sensitivity study."""
