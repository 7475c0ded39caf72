
5
 

service.name
corpus-entry	*
	time zero