"""What is kept between sessions: the run store, stored runs and their labels, the user's workspace."""
