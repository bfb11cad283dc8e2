"""Pure maths of the algorithms (advantages); the losses live with the trainer in services/trainer/losses.py."""
