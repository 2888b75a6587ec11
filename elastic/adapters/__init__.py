"""Everything that touches the world, behind small interfaces."""
