"""The main job: the encrypted tunnel (protocols, peers, keys, timers)."""
