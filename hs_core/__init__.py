"""The foundation every layer may import: settings, the HS nomenclature, text safety, atomic files. No torch, no database."""
