"""The orders example service (demo.v1.Orders): checks users through the mesh before storing."""
