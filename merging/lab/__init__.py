"""A base model held in memory with its adapters and tasks (the Lab), the catalogue of adapters the app offers, their learned/chance badges, and the merge jobs pages start."""
