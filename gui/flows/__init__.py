"""What a click does across the dock: each flow takes what the panels show, drives the controllers, and reports back
to the panels and the person at the screen (opening an image, running a segmentation, saving a result).

Flows sit between the widget (which composes and wires) and the controllers (state and work, which know no panel).
"""
