"""Tamiyo's side of the security envelope: signed AdaptationCommands, transactional
PolicyUpdates and the `keys` command. Keys, keyrings and bus envelopes live in Oona
(oona.keys, oona.keyfiles, oona.envelope), which every component shares."""
