"""The shipped recipes: one `get_config()` per file (`python main.py --config configs/NAME.py`)."""
