"""How a network is trained: the LightningModule, the fused closed-form steps, step boundaries and precision."""
