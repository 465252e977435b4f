"""What a task adds to the one training loop: its data, its head or loss mask, its metrics."""
