"""How a network is trained: the LightningModule, its losses, the UFM's objective and the fused closed-form steps."""
